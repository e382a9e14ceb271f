"""The edit: the methods registry, the rank-one math, apply/revert with the edit record, which
writers to edit (and the read-outs' fits), how strongly (the strength search, with a refusal
meter), and the firing probe. Saving it in any form is :mod:`rosi.export`'s."""
