"""Model: loading (4-bit, LoRA, tiny), training, the predictor, the VRAM budget."""
