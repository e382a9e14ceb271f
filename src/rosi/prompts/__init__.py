"""Prompt sets: rosi's own built-in sets (``data/``), files in every common layout, hub datasets;
the safety system prompts (:mod:`.system`)."""

from rosi.prompts.sets import (
    DEFAULT_N_VAL,
    PromptError,
    PromptSet,
    PromptSets,
    builtin,
    load_prompts,
    load_xstest,
    split_lines,
)

__all__ = ["DEFAULT_N_VAL", "PromptError", "PromptSet", "PromptSets", "builtin", "load_prompts", "load_xstest", "split_lines"]
