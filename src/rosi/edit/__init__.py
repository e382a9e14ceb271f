"""The edit: the methods registry, the rank-one math, apply/revert with the edit record, which
writers to edit, how strongly, and the checkpoint that carries it."""
