"""The refusal direction: mean activations of harmful and harmless prompts, the candidates'
scores, selection, and the :class:`~rosi.direction.vector.Direction` value with its file format."""
