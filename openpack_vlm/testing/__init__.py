"""Stand-ins in the real formats, for tests, the demo and the GPU checks: a synthetic OpenPack root (synthetic.py;
its worker: worker.py), tiny Qwen2-VL models with the real tokenizer (tiny.py, pretrain.py) and smoke shards
(smoke.py). Nothing here is ever presented as an OpenPack result."""
