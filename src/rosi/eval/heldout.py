"""The held-out refusal measurement behind the README's results table: the public prompt sets rosi
never trains on, sampled the same way every time, and the rows a results file keeps.

- :func:`held_out`: ``n`` harmful prompts (AdvBench, JailbreakBench harmful behaviours,
  MaliciousInstruct, a third each), ``n`` harmless ones (the Alpaca test split of
  refusal_direction) and at most 100 look-alikes (JailbreakBench benign behaviours), each drawn
  with seed 0 from the local data folder; :func:`coconot_contrast` adds CoCoNot's contrast
  prompts, :func:`tune_sets` lays both look-alike sets out as `rosi tune`'s evaluation reads them.
- :func:`refusal_row`: one model's refusal on each role (and each source of a role of several),
  through :class:`rosi.measure.RefusalMeter`, with a few replies;
  :func:`verdict_row` keeps every prompt's verdict (for :meth:`PairedDifference.of_verdicts`) and
  the first-token KL against the base model on the harmless prompts; :func:`write_replies` and
  :func:`plot_lookalikes` write its replies and its figure, :func:`read_replies` reads the replies back.

Every refusal figure comes from :mod:`rosi.measure` (the marker judge unless a judge is given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rosi.eval.suites import ADVBENCH, ALPACA, COCONOT, JBB_BENIGN, JBB_HARMFUL, MALICIOUS
from rosi.judges import Judge
from rosi.measure import RefusalMeter, RefusalRate
from rosi.metrics import kl_divergence
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet

Parts = list[tuple[str, PromptSet]]  # a role's prompts as (source, prompts)
MAX_LOOKALIKES = 100  # the look-alike sets are drawn up to this many prompts, whatever ``n``


def held_out(n: int, data_dir: Path) -> dict[str, Parts]:
    """The held-out prompts by role (``harmful``, ``harmless``, ``contrast``), each as (source,
    prompts), drawn from ``data_dir`` (the public datasets' folder) with seed 0."""
    third = n // 3
    return {
        "harmful": [
            (ADVBENCH.name, ADVBENCH.load(data_dir).take(third, seed=0)),
            (JBB_HARMFUL.name, JBB_HARMFUL.load(data_dir).take(third, seed=0)),
            (MALICIOUS.name, MALICIOUS.load(data_dir).take(n - 2 * third, seed=0)),
        ],
        "harmless": [(ALPACA.name, ALPACA.load(data_dir).take(n, seed=0))],
        "contrast": [(JBB_BENIGN.name, JBB_BENIGN.load(data_dir).take(min(n, MAX_LOOKALIKES), seed=0))],
    }


def coconot_contrast(n: int, data_dir: Path) -> PromptSet:
    """CoCoNot's contrast prompts (safe requests that sound harmful), at most 100, seed 0."""
    return COCONOT.load(data_dir).take(min(n, MAX_LOOKALIKES), seed=0)


def instructions(parts: Parts) -> list[str]:
    """A role's prompts, its sources one after another."""
    return [i for _, p in parts for i in p.instructions]


def tune_sets(n: int, data_dir: Path) -> dict[str, list[str]]:
    """The sets `rosi tune`'s outputs are evaluated on: harmful, harmless, and the two look-alike
    sets apart (``jbb_benign``, ``coconot_contrast``)."""
    parts = held_out(n, data_dir)
    return {
        "harmful": instructions(parts["harmful"]),
        "harmless": instructions(parts["harmless"]),
        "jbb_benign": instructions(parts["contrast"]),
        "coconot_contrast": list(coconot_contrast(n, data_dir).instructions),
    }


def describe_sets(sets: dict[str, Parts]) -> dict[str, list[dict[str, Any]]]:
    """What a results file records of the sets: each role's sources and their sizes."""
    return {role: [{"source": s, "n": len(p)} for s, p in parts] for role, parts in sets.items()}


def rate_row(rate: RefusalRate) -> dict[str, Any]:
    """A rate as the rows keep it: ``rate``, ``k`` of ``n`` (the prompts the judge gave a verdict
    on) and the ``wilson95`` interval; ``unjudged``: prompts without a verdict, where there are any."""
    judged = rate.judged
    row: dict[str, Any] = {"rate": judged.value, "k": judged.k, "n": judged.n, "wilson95": [round(x, 4) for x in rate.interval]}
    if judged.n < rate.n:
        row["unjudged"] = rate.n - judged.n
    return row


def refusal_row(
    loaded: LoadedModel, label: str, sets: dict[str, Parts], new_tokens: int, batch_size: int, judge: Judge | None = None
) -> dict[str, Any]:
    """A row: each role's refusal (and each source's, for a role of several) measured by
    :class:`~rosi.measure.RefusalMeter` with ``judge`` (default the marker judge) on greedy
    replies of ``new_tokens`` tokens, and each role's first four replies (``samples``)."""
    meter = RefusalMeter(loaded, judge, batch_size=batch_size, progress=True, share_prefix=False)  # as the stored rows were measured
    row: dict[str, Any] = {"label": label}
    samples = {}
    for role, parts in sets.items():
        prompts = instructions(parts)
        replies = meter.replies(prompts, new_tokens, desc=f"{label}, {role}")
        rate = meter.judged(prompts, replies, new_tokens=new_tokens)
        row[role] = rate_row(rate)
        start = 0
        for source, p in parts if len(parts) > 1 else []:
            part = RefusalRate(rate.refused[start : start + len(p)]).judged
            row[role][source] = {"rate": part.value, "n": part.n}
            start += len(p)
        samples[role] = [{"prompt": i, "reply": r} for i, r in list(zip(prompts, replies, strict=True))[:4]]
    row["samples"] = samples
    return row


def verdict_row(
    loaded: LoadedModel,
    label: str,
    sets: dict[str, list[str]],
    new_tokens: int,
    batch_size: int,
    base_logprobs: Any = None,
    judge: Judge | None = None,
) -> tuple[dict[str, Any], Any]:
    """A row with every prompt's verdict (``refused``, in the sets' order: rows pair prompt by
    prompt) and the judge's ``partial`` rate, each set's first three replies and every reply
    (``replies``); the harmless prompts' first-token log-probabilities come from the generation of
    their replies (no shared prefix) and are returned beside, with the mean
    ``kl_harmless_first_token`` against ``base_logprobs`` when given."""
    meter = RefusalMeter(loaded, judge, batch_size=batch_size, progress=True, share_prefix=False)  # as the stored rows were measured
    row: dict[str, Any] = {"label": label, "samples": {}, "replies": {}}
    logprobs = None
    for role, prompts in sets.items():
        if role == "harmless":
            replies, logprobs = meter.replies_and_logprobs(prompts, new_tokens, share_prefix=False)
        else:
            replies = meter.replies(prompts, new_tokens, desc=f"{label}, {role}")
            row["samples"][role] = [{"prompt": p, "reply": r} for p, r in list(zip(prompts, replies, strict=True))[:3]]
        rate = meter.judged(prompts, replies, new_tokens=new_tokens)
        row["replies"][role] = replies
        row[role] = {**rate_row(rate), "partial": rate.partial_rate, "refused": list(rate.refused)}
    if logprobs is None:
        raise ValueError("the sets have no harmless prompts for the KL")
    if base_logprobs is not None:
        row["kl_harmless_first_token"] = float(kl_divergence(base_logprobs, logprobs).mean())
    return row, logprobs


def write_replies(path: Path, model: str, rows: list[dict[str, Any]], sets: dict[str, list[str]]) -> None:
    """Every reply of every row (each row's ``_replies``: the ``replies`` of :func:`verdict_row`),
    one JSON line each (model, edit, set, prompt, reply): what the refusal figures judged, for
    reading and for labelling."""
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            for role, replies in r["_replies"].items():
                for prompt, reply in zip(sets[role], replies, strict=True):
                    f.write(json.dumps({"model": model, "edit": r["label"], "set": role, "prompt": prompt, "reply": reply}) + "\n")


def read_replies(path: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The replies :func:`write_replies` wrote, grouped by (row label, prompt set), each group in
    the file's order (the order of the row's verdicts)."""
    replies: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        replies.setdefault((item["edit"], item["set"]), []).append(item)
    return replies


def legend(row: dict[str, Any]) -> str:
    """A row's label, with its form when it is a tune's trial ("trial 7: surgical")."""
    params = row.get("params")
    return f"{row['label']}: {params['form']}" if isinstance(params, dict) and "form" in params else row["label"]


def plot_lookalikes(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows of :func:`verdict_row` on :func:`tune_sets` as a figure: held-out harmful refusal
    against each look-alike set's refusal, 95% intervals both ways (needs matplotlib, ``.[eval]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.get_cmap("tab10")
    for ax, look in zip(axes, ("jbb_benign", "coconot_contrast"), strict=True):
        for i, r in enumerate(rows):
            x, y = r[look], r["harmful"]
            ax.errorbar(
                x["rate"],
                y["rate"],
                xerr=[[x["rate"] - x["wilson95"][0]], [x["wilson95"][1] - x["rate"]]],
                yerr=[[y["rate"] - y["wilson95"][0]], [y["wilson95"][1] - y["rate"]]],
                fmt="*" if r["label"] == "base model" else "o",
                markersize=12 if r["label"] == "base model" else 7,
                color="black" if r["label"] == "base model" else colours(i),
                capsize=3,
                label=legend(r),
            )
        ax.set_xlabel(f"{look} refusal (held-out look-alikes)")
        ax.set_ylabel("harmful refusal (held-out)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
