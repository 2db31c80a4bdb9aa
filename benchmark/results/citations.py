"""What a run should cite, gathered from one place: each plugin's own `REFERENCES`.

A method plugin module (or object) and a dataset plugin class carry `REFERENCES`, a tuple of
BibTeX entries; backbones and dermbench itself are in `backbone_refs`. The runner stores a
run's references in its record (`references`), `dermbench cite` prints them, and docs/cite.md's
list is `dermbench cite --all --markdown` (a test keeps the two equal).

References are keyed by what they are for: "dermbench", "method NAME", "dataset NAME",
"backbone NAME". A plugin without `REFERENCES` (a third-party one) is listed with no entries,
so the gap is visible rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dermbench.errors import unknown_name
from dermbench.plugins import (
    BUILTIN_DATASETS,
    BUILTIN_METHODS,
    dataset_refs,
    load_target,
    method_refs,
    parse_method_spec,
)
from dermbench.results.backbone_refs import BACKBONES, DERMBENCH, TIMM, backbone_references
from dermbench.results.bibtex import check_entry, entry_key, one_line

#: {what: [BibTeX entry, ...]} with `what` as in the module docstring
References = dict[str, list[str]]


def plugin_references(obj: object, *, what: str) -> list[str]:
    """`obj.REFERENCES` checked entry by entry (a malformed one is an error naming `what`)."""
    refs = getattr(obj, "REFERENCES", ())
    if isinstance(refs, str) or not isinstance(refs, tuple | list):
        raise TypeError(f"{what}: REFERENCES must be a tuple of BibTeX strings, got {type(refs).__name__}")
    return [check_entry(entry) for entry in refs]


def method_references(spec: str, local: tuple[str, ...] = ()) -> References:
    """{"method NAME": entries} for each method of a spec such as "dermdiff+fairquantize"."""
    refs = method_refs(local)
    out: References = {}
    for name in parse_method_spec(spec):
        if name not in refs:
            raise unknown_name("method", name, refs)
        out[f"method {name}"] = plugin_references(load_target(refs[name].target), what=f"method {name}")
    return out


def dataset_references(names: Iterable[str], local: tuple[str, ...] = ()) -> References:
    """{"dataset NAME": entries} for each dataset named (in the order given, once each)."""
    refs = dataset_refs(local)
    out: References = {}
    for name in dict.fromkeys(names):
        if name not in refs:
            raise unknown_name("dataset", name, refs)
        out[f"dataset {name}"] = plugin_references(load_target(refs[name].target), what=f"dataset {name}")
    return out


def run_references(
    *, method: str, datasets: Iterable[str], backbones: Iterable[str], local: tuple[str, ...] = ()
) -> References:
    """Everything one run used: dermbench, its methods, its datasets (training and evaluated test
    sets) and its timm backbones (none for a method whose model holds no timm network)."""
    out: References = {"dermbench": [DERMBENCH]}
    out.update(method_references(method, local))
    out.update(dataset_references(datasets, local))
    for backbone in dict.fromkeys(backbones):
        out[f"backbone {backbone}"] = list(backbone_references(backbone))
    return out


def model_backbones(model: object, configured: str) -> list[str]:
    """The timm architectures inside the model a run's `fit` returned, read from each timm
    module's `pretrained_cfg`: a method that replaces the harness's backbone (FEDD's diffusion
    features, Class-N-Diff's latent classifier) cites what it really used. A model that is not a
    torch module cannot be inspected: the configured backbone is cited."""
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return [configured]
    found = (getattr(m, "pretrained_cfg", None) for m in modules())
    return list(
        dict.fromkeys(
            cfg["architecture"] for cfg in found if isinstance(cfg, dict) and cfg.get("architecture")
        )
    )


def all_references() -> References:
    """Every built-in method and dataset in name order, then each backbone family ("backbone
    vgg*") and timm (docs/cite.md). Entry-point plugins are left out: README lists what
    dermbench ships."""
    out: References = {"dermbench": [DERMBENCH]}
    out.update(method_references("+".join(sorted(BUILTIN_METHODS))))
    out.update(dataset_references(sorted(BUILTIN_DATASETS)))
    families: dict[tuple[str, ...], list[str]] = {}
    for prefix, entries in BACKBONES.items():
        families.setdefault(entries, []).append(f"{prefix}*")
    for entries, prefixes in families.items():
        out[f"backbone {', '.join(prefixes)}"] = list(entries)
    out["library timm"] = [TIMM]
    return out


def unique_entries(refs: Mapping[str, list[str]]) -> list[str]:
    """The entries of `refs` in order, each citation key once (ResNet cited by two keys: once)."""
    seen: dict[str, str] = {}
    for entries in refs.values():
        for entry in entries:
            seen.setdefault(entry_key(entry), entry)
    return list(seen.values())


def as_bibtex(refs: Mapping[str, list[str]]) -> str:
    """A .bib file: a comment per item saying which entries it needs, then the unique entries."""
    lines = [
        f"% {what}: {', '.join(entry_key(e) for e in entries) or '(declares no references)'}"
        for what, entries in refs.items()
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(unique_entries(refs)) + "\n"


def as_markdown(refs: Mapping[str, list[str]]) -> str:
    """A bullet list for README: one item per method/dataset/backbone with its papers."""
    lines = []
    for what, entries in refs.items():
        kind, _, name = what.partition(" ")
        label = f"{kind} `{name}`" if name else kind
        if not entries:
            lines.append(f"- {label}: (declares no references)")
        elif len(entries) == 1:
            lines.append(f"- {label}: {one_line(entries[0])}")
        else:
            lines.append(f"- {label}:")
            lines.extend(f"  - {one_line(e)}" for e in entries)
    return "\n".join(lines) + "\n"
