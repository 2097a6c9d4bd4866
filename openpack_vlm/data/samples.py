"""``training_data_samples/``: a few clips exported from the shards as JPEG files + their training pair.

The examples are spread evenly over the train, val and test manifests; their README says what they were made from
and the exact commands that remake them (tests/test_pipeline.py regenerates and compares them byte for byte).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

from ..io_utils import write_atomic, write_json
from ..prompt import DEFAULT_SPAN, build_messages
from .shards import frame_member


def pair_for(record: dict, span: str) -> dict:
    """Chat-format training pair of a clip (its span in the ``span`` format); image items name their member in the
    record's shard."""
    members = [f"{record['clip_id']}.{frame_member(i)}" for i in range(len(record["frame_indices"]))]
    messages = build_messages(record["frame_indices"], record["truth"], span=span)
    it = iter(members)
    for msg in messages:
        for item in msg["content"]:
            if item["type"] == "image":
                item["image"] = next(it)
    return {"clip_id": record["clip_id"], "split": record["split"], "shard": record["extra"]["shard"],
            "images": members, "messages": messages}


def spread(specs: list, n: int | None) -> list:
    """At most n items, evenly spread over the list (all of them when n is None or the list is shorter)."""
    if n is None or len(specs) <= n:
        return specs
    keep = sorted({int(round(x)) for x in np.linspace(0, len(specs) - 1, n)})
    return [specs[i] for i in keep]


SAMPLES_README = """# Training data samples

{n} examples exported by the data pipeline, frames exactly as stored in the shards (336x336 JPEG) plus the training
pair. `{{clip_id}}.json` holds the clip's record (`record`: truth, sampled frame indices, source, and `frame_ops`: the
operation at each sampled frame, which the frame head is trained on) and the chat messages (`messages`);
`{{clip_id}}.fNN.jpg` are its K sampled frames in order (image items in `messages` name them). The examples are spread
evenly over the train, val and test manifests.

{span}

Input: {input}

Made by (byte-identical on every run; tests/test_pipeline.py regenerates and compares them):

{command}
"""


def _describe_input(root: Path, flags: str = "") -> tuple[str, str]:
    """What the samples were made from, and the commands that remake them (no machine paths, no times)."""
    meta = root / "synthetic_config.json"
    if meta.is_file():
        c = json.loads(meta.read_text())["config"]
        w, h = c["rgb_size"]
        what = (f"synthetic OpenPack root (openpack_vlm.testing.synthetic, seed {c['seed']}, users {' '.join(c['users'])}, "
                f"sessions {' '.join(c['sessions'])}, {c['session_seconds']:g} s, RGB frames {w}x{h}); not real data.")
        cmd = (f"    python -m openpack_vlm.testing.synthetic --out /tmp/openpack-synth --seed {c['seed']} "
               f"--users {' '.join(c['users'])} --sessions {' '.join(c['sessions'])} "
               f"--seconds {c['session_seconds']:g} --rgb-size {w}x{h}" + ("" if c["rgb"] else " --no-rgb") + "\n"
               "    python data_pipeline.py --root /tmp/openpack-synth --out /tmp/openpack-data "
               + (flags + " " if flags else "") + "--samples-out training_data_samples --n-samples {n}")
        return what, cmd
    return ("an OpenPack root (real data).",
            "    python data_pipeline.py --root $OPENPACK_ROOT --out <dir> " + (flags + " " if flags else "")
            + "--samples-out <dir> --n-samples {n}")

SPAN_NOTE = {
    "shown": "The answer's `temporal_segment` names the first and the last SAMPLED frame inside the dominant operation "
             "(answer format `shown`,\nprompt.shown_span): frame numbers the prompt shows. `record.truth` keeps the "
             "exact clip frames that evaluation scores\nagainst; the predictor turns an answer back into clip frames "
             "(prompt.clip_span).",
    "clip": "The answer's `temporal_segment` is the truth's exact clip frames (answer format `clip`).",
}


def export_samples(out: Path, dest: Path, n: int, splits: list[str], root: Path, flags: str = "",
                   span: str = DEFAULT_SPAN) -> list[str]:
    """Copy n clips (spread evenly over all splits' manifests) as JPEG files + pair JSON into ``dest``; ``flags``:
    the pipeline flags that shaped them, written into the README's command; ``span``: the answer's span format."""
    records = []
    for split in splits:
        man = out / split / "manifest.jsonl"
        if man.exists():
            records.extend(json.loads(line) for line in man.read_text().splitlines() if line)
    chosen = spread(records, n)
    dest.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = {"README.md"}
    by_shard: dict[tuple[str, str], list[dict]] = {}
    for r in chosen:
        by_shard.setdefault((r["split"], r["extra"]["shard"]), []).append(r)
    for (split, shard), recs in by_shard.items():
        need = {f"{r['clip_id']}.{frame_member(i)}" for r in recs for i in range(len(r["frame_indices"]))}
        with tarfile.open(out / split / shard) as tar:
            for m in tar.getmembers():
                if m.name in need:
                    write_atomic(dest / m.name, tar.extractfile(m).read())
                    wanted.add(m.name)
        for r in recs:
            pair = pair_for(r, span)
            body = {"record": r, "messages": pair["messages"]}
            write_json(dest / f"{r['clip_id']}.json", body)
            wanted.add(f"{r['clip_id']}.json")
    what, cmd = _describe_input(root, flags)
    write_atomic(dest / "README.md", SAMPLES_README.format(n=len(chosen), input=what, command=cmd.format(n=n),
                                                                   span=SPAN_NOTE[span]))
    for p in dest.iterdir():
        if p.is_file() and p.name not in wanted and (p.suffix in (".jpg", ".json") or p.name.endswith(".tmp")):
            p.unlink()  # stale files of an earlier export
    return [r["clip_id"] for r in chosen]
