"""Shipping the edit where models run: PEFT and GGUF LoRA adapters, GGUF files edited in place,
patches applied to base checkpoints larger than memory, verify and revert, model cards."""
