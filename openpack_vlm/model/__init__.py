"""Model: loading (4-bit, LoRA; the tiny ids resolve to openpack_vlm.testing), training, the predictor, the VRAM budget."""
