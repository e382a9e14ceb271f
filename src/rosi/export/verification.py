"""What ``verify`` says of an output, whatever its format: one :class:`Verification`.

Each output format's ``verify`` (:mod:`rosi.export.formats`) checks its output against its edit
record (and, given one, its base) and answers with the checks it made, one :class:`Check` each: a
tensor against the base, a recorded factor against the weights, an adapter's factors against the
record, a patch's base tensors against their digests. The output matches only if every check holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verification:
    model: str
    format: str  # the output format's registry name
    method: str
    strength: float
    matrices: int
    checks: list[Check] = field(default_factory=list)
    base: str | None = None  # what it was checked against (None: its record alone)
    metadata: dict[str, str] = field(default_factory=dict)  # what the output says of itself (a GGUF's rosi.* keys)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.format,
            "method": self.method,
            "strength": self.strength,
            "matrices_edited": self.matrices,
            "base": self.base,
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            **({"metadata": self.metadata} if self.metadata else {}),
        }

    def report(self) -> str:
        """The checks as lines of text: what the output is, then one line per check."""
        against = f", against {self.base}" if self.base else ""
        lines = [f"rosi: {self.model}: {self.format}: {self.method} at strength {self.strength:g} on {self.matrices} matrices{against}"]
        lines += [f"  {k}: {v}" for k, v in self.metadata.items()]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def failure(self) -> str:
        """What a failed verification is, in one line (the failed checks are in :meth:`report`)."""
        return f"{self.model} does not match its edit record" + (" and base" if self.base else "")
