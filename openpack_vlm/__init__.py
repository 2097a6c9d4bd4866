"""openpack-vlm: temporal operation understanding on OpenPack with a QLoRA-tuned Qwen2-VL.

Data side (never imports the model): labels, openpack, synthetic, clips, frames, sampling, prompt, schema, shards.
Model side: model, train, predict. Pure: metrics, grammar.
"""
__version__ = "0.1.0"
