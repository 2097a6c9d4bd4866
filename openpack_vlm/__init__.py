"""openpack-vlm: temporal operation understanding on OpenPack with a QLoRA-tuned Qwen2-VL.

Shared by every phase: labels (the classes), schema (the answer), prompt (the chat), grammar (next-op prior),
contract (run.json, the settings that travel from data to API), io_utils (atomic writer, error lines), cli (settings
dataclass -> flags). Phases: data/ (never imports the model) -> model/ (loading, train, predict, vram) ->
evaluation/ (metrics, evaluate) -> serving/ (settings, uploads, decoders, app).
"""
__version__ = "0.1.0"
