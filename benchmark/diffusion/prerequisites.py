"""Where a diffusion method's starting model will come from, checked before any data loads.

A method's `dermbench_check_settings` hook calls `model_source` for each model setting that is
not the tiny stand-in (DermDiff's and majority-to-minority's Stable Diffusion, Class-N-Diff's
VAE, FEDD's pixel UNet): a local folder must exist; a hub id is looked up in the local Hugging
Face cache only (never downloaded here). Absent from the cache, the run stops at once with the
download command when the hub is off (`HF_HUB_OFFLINE`) or, in a real run (`fetch`), when the hub
does not answer; under `--dry-run` (`fetch` False) nothing touches the network or stops: the
status says the model is missing (with the command) or would be downloaded at first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dermbench.errors import ConfigError, DermbenchError

#: seconds the reachability check of the hub waits
HUB_TIMEOUT_S = 15


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def is_local(source: str) -> bool:
    """Whether `source` names a folder (an existing path, or one written as a path) or a hub id."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def cached_snapshot(source: str, revision: str | None = None) -> Path | None:
    """The local Hugging Face cache's snapshot folder of hub repo `source`, None when absent."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (hub code only for hub ids)

    try:
        return Path(
            snapshot_download(source, revision=revision, local_files_only=True, allow_patterns=["*.json"])
        )
    except Exception:  # noqa: BLE001 (any miss: not cached, an unknown revision, a broken ref)
        return None


def download_command(source: str, revision: str | None = None) -> str:
    return f"huggingface-cli download {source}" + (f" --revision {revision}" if revision else "")


def model_source(
    source: str,
    *,
    setting: str,
    revision: str | None = None,
    fetch: bool = True,
    what: str = "diffusion model",
) -> dict[str, Any]:
    """{setting, source, status, folder} of the model `setting` names (a folder or a hub id); a
    ConfigError for a folder that does not exist, a DermbenchError with the download command for a
    hub model that is neither cached nor (offline, or unreachable when `fetch`) obtainable."""
    if not isinstance(source, str) or not source:
        raise ConfigError(f"setting {setting!r} must name a local folder or a hub id, got {source!r}")
    out: dict[str, Any] = {"setting": setting, "source": source, "folder": None}
    if is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"setting {setting!r}: the {what} folder {folder} does not exist (give a folder in the "
                "diffusers layout or a hub id)"
            )
        return {**out, "status": f"local folder {folder}", "folder": folder}
    command = download_command(source, revision)
    cached = cached_snapshot(source, revision)
    if cached is not None:
        return {**out, "status": f"in the local Hugging Face cache ({cached})", "folder": cached}
    fix = (
        f"On a machine with network access run `{command}` (then copy ~/.cache/huggingface here or set "
        f"HF_HOME), or set {setting} to a local folder; `--profile tiny` needs no checkpoint"
    )
    if not fetch:  # --dry-run: report, never enforce or touch the network
        if hub_offline():
            return {
                **out,
                "missing": True,
                "status": f"MISSING: not in the local Hugging Face cache and HF_HUB_OFFLINE "
                f"is set; fetch it with `{command}`",
            }
        return {**out, "status": f"not in the local Hugging Face cache: downloaded at first use ({command})"}
    if hub_offline():
        raise DermbenchError(
            f"{setting}={source!r}: the {what} is not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set. {fix}"
        )
    try:
        from huggingface_hub import HfApi  # noqa: PLC0415

        HfApi().model_info(source, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 (offline, unknown id, gated: say which and how to fix)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DermbenchError(
            f"{setting}={source!r}: the {what} is not in the local Hugging Face cache and the hub "
            f"cannot be reached ({type(exc).__name__}: {first}). {fix}"
        ) from exc
    return {**out, "status": "not in the local Hugging Face cache; the hub answers: downloaded at first use"}
