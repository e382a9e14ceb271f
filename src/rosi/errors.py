"""Errors rosi raises on purpose.

Every one carries a single line that names the problem and, where there is one, the fix.
The CLI prints that line and exits non-zero; library users catch :class:`RosiError`.
"""

from __future__ import annotations


class RosiError(Exception):
    """Base class: a problem with the user's input or environment, explained in one line."""


class ModelNotFoundError(RosiError):
    """The model path does not exist and is not a hub id."""


class UnsafeWeightsError(RosiError):
    """The weights are pickle-based (.bin/.pt) and the user did not opt in."""


class RemoteCodeError(RosiError):
    """The model needs code from its repository and trust_remote_code is off."""


class NotCausalLMError(RosiError):
    """The checkpoint is not a causal language model."""


class CorruptWeightsError(RosiError):
    """A weights file cannot be read: truncated, not safetensors, or damaged."""


class UnsupportedArchitectureError(RosiError):
    """rosi cannot tell with certainty which matrices write the residual stream."""


class DirectionError(RosiError):
    """A direction file or vector is unusable (wrong shape, zero, not finite, ...)."""


class EditError(RosiError):
    """An edit cannot be applied as asked (bad strength, tied embedding, ...)."""


class RecordError(RosiError):
    """An edit record file cannot be read: truncated, not safetensors, another kind of file, or a
    field of the wrong type or shape."""


class ManifestError(RosiError):
    """A rosi output folder's ``rosi.json`` cannot be read or has fields of the wrong type."""


class JournalError(RosiError):
    """A ``rosi tune`` journal is not an Optuna journal of a rosi tune, or cannot be resumed."""


class OutputExistsError(RosiError):
    """The output path exists and overwriting was not asked for."""


class EvalError(RosiError):
    """An evaluation cannot run as asked."""


def first_line(text: str) -> str:
    """The first line of a library's error text, for one-line messages that quote it."""
    return text.strip().splitlines()[0] if text.strip() else "no details"
