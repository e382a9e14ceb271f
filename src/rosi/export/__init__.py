"""Shipping the edit where models run: the output-format registry (:mod:`.formats`: checkpoint,
PEFT LoRA, GGUF edited in place, GGUF LoRA, patch), each entry saving, verifying and, where it
can, applying and reverting its output; the ``rosi.json`` manifest (:mod:`.checkpoint`), an edit
record's base, streaming large checkpoints tensor by tensor, model cards."""
