"""Data: OpenPack access, clips, the time grid and frame sources, sampling, shards, the pipeline, the exports."""
