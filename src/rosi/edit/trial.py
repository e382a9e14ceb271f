"""The edit a run would make, as the small callable that direction selection tries candidates with.

Selection (:mod:`rosi.direction.selection`) knows nothing of edits: when no candidate passes
Arditi's filters it scores candidates by what ROSI will really do with them, through an
:data:`~rosi.direction.selection.EditTrial`. :class:`EditTrial` is that callable: for a candidate
direction it chooses the writers as the run will (:func:`rosi.edit.scope.choose_writers`),
applies the method at its selection strength, and reverts it bit for bit on leaving. Methods
fit on single prompts (``gate``, ``surgical``) are tried as ``probe``, their mean-input relative:
their samples are taken at the chosen position only, after selection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from rosi.direction.activations import ActivationPair
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.edit.methods import EditForm
from rosi.edit.scope import choose_writers
from rosi.errors import RosiError
from rosi.model.architecture import ArchitectureMap


@dataclass(frozen=True)
class EditTrial:
    model: nn.Module
    arch: ArchitectureMap
    activations: ActivationPair
    form: EditForm  # the run's form; the trial edits with :attr:`tried`

    def __post_init__(self) -> None:
        if self.form.spec.effect_strength is None:
            raise RosiError(f"direction selection cannot try method {self.form.method!r}; choose one rosi run offers")

    @property
    def tried(self) -> EditForm:
        """The form tried: the run's, or the one its method is tried as (:attr:`rosi.edit.methods.Method.tried_as`), in the same scope."""
        spec = self.form.spec.tried_as
        return self.form if spec is self.form.spec else EditForm(spec.name, self.form.scope)

    @contextmanager
    def __call__(self, direction: Direction) -> Iterator[None]:
        form = self.tried
        choice = choose_writers(self.model, self.arch, direction, self.activations, form)
        strength = form.spec.effect_strength
        assert strength is not None  # checked in __post_init__ (a form tried as another has the same)
        record = apply_edit(self.model, direction, form.spec, strength, writers=choice.writers, reads=choice.reads, keep_originals=True)
        try:
            yield
        finally:
            revert_edit(self.model, record)
