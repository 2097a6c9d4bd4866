"""The training pairs for other trainers: 2U1/Qwen2-VL-Finetune (LLaVA JSON) and LLaMA-Factory (sharegpt + images).

    python -m openpack_vlm.data.export --data D --out X            # or: python data_pipeline.py ... --export_llava X

Writes, from the data dir D that data_pipeline.py built (every clip of every split, frames byte for byte from the
shards, the answer in D/run.json's span format):

    X/images/{split}/{clip_id}/fNN.jpg   the K sampled frames of each clip, exactly the shard members' bytes
    X/{split}.llava.json                 2U1's format ("id", "image": [paths], "conversations": human/gpt)
    X/{split}.sharegpt.json              LLaMA-Factory's sharegpt format ("conversations", "images", "system")
    X/dataset_info.json                  LLaMA-Factory's dataset entries openpack_{split}
    X/system_prompt.txt                  the system turn (2U1 has a fixed one: README says how to set it)
    X/export.json                        what was exported from where

Formats followed (quoted in tests/test_export.py, which rebuilds the model's text from them and compares it with
the text this repo trains on, token for token):
- 2U1 README "Dataset Preparation" (commit 6695161): a JSON list; multi-image entries list their files in "image"
  and put one ``<image>`` per file in the human turn. ``src/dataset/data_utils.replace_image_tokens`` swaps
  ``\\n?<image>\\n?`` for the vision tokens, eating one newline on each side, so the newline our prompt has after
  the last frame is written twice here. Its system turn is the constant ``SYSTEM_MESSAGE`` (src/constants.py).
- LLaMA-Factory data/README.md "Multimodal Image Dataset" (commit ff6d4d1): sharegpt ``conversations`` with
  from/value, an ``images`` column with as many paths as ``<image>`` tags, optional ``system`` column; the qwen2_vl
  plugin replaces each ``<image>`` as is. Image paths are relative to the dataset dir (its ``media_dir`` default).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cli import build_parser, parse, setting
from ..contract import RUN_FILE, RunContract
from ..io_utils import atomic_path, one_line
from ..prompt import build_messages, system_prompt
from .shards import frame_member, iter_raw_samples, sample_jpegs, shard_paths

IMAGE_TAG = "<image>"  # both trainers' image placeholder (2U1: LLAVA_IMAGE_TOKEN; LLaMA-Factory: IMAGE_PLACEHOLDER)


class ExportError(ValueError):
    """Bad input to the export (no data dir, no run contract, no shards)."""


@dataclass
class ExportConfig:
    """Settings of ``python -m openpack_vlm.data.export``."""

    data: str = setting("out/data", "data dir D written by data_pipeline.py (shards + run.json)")
    out: str = setting("out/llava", "folder to write (replaced as a whole when the export is complete)")
    splits: list[str] | None = setting(None, "only these splits (default: every split in D/run.json)")


def turns(frame_indices: list[int], truth: dict, span: str) -> tuple[str, str, str]:
    """(system, user, assistant) texts of one clip, the user turn with one ``<image>`` per frame where the chat
    template puts the image: exactly ``prompt.build_messages``'s content, text items joined in order."""
    system, user, answer = build_messages(frame_indices, truth, span=span)
    text = "".join(IMAGE_TAG if it["type"] == "image" else it["text"] for it in user["content"])
    return system["content"][0]["text"], text, answer["content"][0]["text"]


def _llava_human(user: str) -> str:
    """The human turn for 2U1, whose loader eats one newline on each side of ``<image>`` (see the module doc):
    each newline next to a tag is doubled so that one survives."""
    return user.replace(IMAGE_TAG + "\n", IMAGE_TAG + "\n\n").replace("\n" + IMAGE_TAG, "\n\n" + IMAGE_TAG)


def export_llava(data: str | Path, out: str | Path, splits: list[str] | None = None, progress=None) -> dict:
    """Write the export described in the module doc into ``out`` (atomically: the folder appears complete or not at
    all). Returns export.json's content."""
    data, out = Path(data), Path(out)
    if not (data / RUN_FILE).is_file():
        raise ExportError(f"{data / RUN_FILE} not found: --data must be a data dir written by data_pipeline.py")
    contract = RunContract.load(data)
    span = contract.data.answer_span
    wanted = list(contract.data.splits) if splits is None else list(splits)
    unknown = [s for s in wanted if s not in contract.data.splits]
    if unknown:
        raise ExportError(f"unknown split(s) {', '.join(unknown)}; {data} has {', '.join(contract.data.splits)}")
    counts: dict[str, int] = {}
    info: dict[str, dict] = {}
    with atomic_path(out, directory=True) as tmp:
        for split in wanted:
            try:
                paths = shard_paths(data / split)
            except FileNotFoundError as e:
                raise ExportError(str(e)) from None
            llava, sharegpt = [], []
            for sample in iter_raw_samples(paths):
                try:
                    rec, jpegs = sample_jpegs(sample)  # the shard members' bytes, not decoded
                except KeyError as e:
                    raise ExportError(e.args[0]) from None
                record = rec.to_json()
                cid = record["clip_id"]
                images = [f"images/{split}/{cid}/{frame_member(i)}" for i in range(len(jpegs))]
                for rel, blob in zip(images, jpegs):
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(blob)
                system, user, answer = turns(record["frame_indices"], record["truth"], span)
                llava.append({"id": cid, "image": images, "conversations": [
                    {"from": "human", "value": _llava_human(user)}, {"from": "gpt", "value": answer}]})
                sharegpt.append({"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}],
                                 "images": images, "system": system, "id": cid})
                if progress is not None:
                    progress(split, cid)
            counts[split] = len(llava)
            (tmp / f"{split}.llava.json").write_text(json.dumps(llava, indent=1) + "\n")
            (tmp / f"{split}.sharegpt.json").write_text(json.dumps(sharegpt, indent=1) + "\n")
            info[f"openpack_{split}"] = {"file_name": f"{split}.sharegpt.json", "formatting": "sharegpt",
                                         "columns": {"messages": "conversations", "images": "images",
                                                     "system": "system"}}
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "system_prompt.txt").write_text(system_prompt(span) + "\n")
        meta = {"data": str(data), "answer_span": span, "k": contract.data.k, "source": contract.data.source,
                "frame_size": contract.data.frame_size, "clips": counts,
                "formats": {"2U1/Qwen2-VL-Finetune": "{split}.llava.json (--data_path, --image_folder X)",
                            "LLaMA-Factory": "dataset_info.json: openpack_{split} (--dataset_dir X)"}}
        (tmp / "export.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def main(argv=None) -> int:
    parser = build_parser(ExportConfig, prog="python -m openpack_vlm.data.export", description=__doc__.split("\n")[0])
    try:
        cfg, _ = parse(parser, argv)
        from tqdm import tqdm

        with tqdm(desc="clips exported", unit="clip") as bar:
            meta = export_llava(cfg.data, cfg.out, cfg.splits, progress=lambda split, cid: bar.update(1))
    except (ExportError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.out}: " + ", ".join(f"{s} {n} clips" for s, n in meta["clips"].items())
          + f" (answer span {meta['answer_span']}); 2U1: {cfg.out}/{{split}}.llava.json, LLaMA-Factory: "
          f"{cfg.out}/dataset_info.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
