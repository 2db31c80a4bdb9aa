"""`dermbench diffusion pretrain-base --out DIR`: build the tiny diffusion bases the package ships
(`dermbench.diffusion.pretraining`; docs/diffusion.md, "The shipped tiny base").

The build is deterministic on CPU: rebuilding with the default recipe gives the files whose
checksums the package lists, which `--compare` checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from dermbench.config import parse_set
from dermbench.diffusion.pretraining import SETTINGS, pretrain_bases
from dermbench.diffusion.shipped import CHECKSUMS, SHIPPED
from dermbench.errors import ConfigError


def cmd_pretrain_base(args: argparse.Namespace) -> int:
    overrides: dict = {}
    for item in args.set or []:
        parsed = parse_set(item)
        ((key, value),) = parsed.items()
        if isinstance(value, dict):
            raise ConfigError(f"bad --set {item!r}: pretraining settings are flat ({', '.join(SETTINGS)})")
        overrides[key] = value
    out = Path(args.out)
    checksums = pretrain_bases(out, overrides=overrides, console=Console(stderr=True))
    print(
        f"wrote the tiny bases ({len(checksums)} files, "
        f"{sum((out / f).stat().st_size for f in checksums) / 1e6:.1f} MB) to {out}"
    )
    if args.compare:
        shipped = json.loads((SHIPPED / CHECKSUMS).read_text(encoding="utf-8"))
        differ = sorted(f for f in set(shipped) | set(checksums) if shipped.get(f) != checksums.get(f))
        if differ:
            print(f"differs from the shipped bases in {len(differ)} file(s): {', '.join(differ)}")
            return 1
        print("byte-identical to the shipped bases")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "diffusion",
        help="the tiny diffusion bases shipped with dermbench",
        description="Commands for the tiny diffusion bases the tiny profile starts from.",
    )
    commands = p.add_subparsers(dest="diffusion_command", metavar="COMMAND", required=True)
    pre = commands.add_parser(
        "pretrain-base",
        help="pretrain the tiny text-to-image and pixel diffusion bases (CPU, about 30 min)",
        description="Render SynthDerm scenes from seeds outside every protocol split, caption them with "
        "skin tone and lesion look (no diagnosis), and train the tiny latent text-to-image model and the "
        "tiny pixel DDPM on them, deterministically on one CPU thread. To replace the shipped bases, build "
        "into a new folder and move it to benchmark/diffusion/tiny_base.",
    )
    pre.add_argument(
        "--out", required=True, metavar="DIR", help="an empty or new folder to write the bases into"
    )
    pre.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=f"change the recipe (keys: {', '.join(SETTINGS)})"
    )
    pre.add_argument(
        "--compare",
        action="store_true",
        help="exit 1 unless the result is byte-identical to the shipped bases",
    )
    pre.set_defaults(func=cmd_pretrain_base)
