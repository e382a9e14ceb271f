"""The refusal direction: activations of harmful and harmless prompts (means, single prompts'
samples, every token's second moments), the candidates' scores, selection, the
:class:`~rosi.direction.vector.Direction` value with its file format, how well it separates
held-out prompts, and the null direction (the signature of abliteration)."""
