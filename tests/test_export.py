"""The 2U1 / LLaMA-Factory export (openpack_vlm/data/export.py) against the formats those trainers document.

Each trainer's rule for turning a record into model text is written out here from its source, and the result must be
the text this repo's training collator renders with the real Qwen2-VL chat template, character for character:
- 2U1/Qwen2-VL-Finetune @ 6695161 (README "Dataset Preparation", src/dataset/data_utils.py, sft_dataset.py):
  ``re.sub(r'\\n?' + re.escape("<image>") + r'\\n?', "<|vision_start|><|image_pad|><|vision_end|>", value)``,
  roles human→user, gpt→assistant, system turn ``<|im_start|>system\\n{SYSTEM_MESSAGE}<|im_end|>\\n``.
- LLaMA-Factory @ ff6d4d1 (data/README.md "Multimodal Image Dataset"; template qwen2_vl in data/template.py;
  Qwen2VLPlugin.process_messages): system ``<|im_start|>system\\n{{content}}<|im_end|>\\n``, user
  ``<|im_start|>user\\n{{content}}<|im_end|>\\n<|im_start|>assistant\\n``, assistant ``{{content}}<|im_end|>\\n``,
  each ``<image>`` replaced as is by ``<|vision_start|>`` + image tokens + ``<|vision_end|>``.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from openpack_vlm.data import export as export_mod
from openpack_vlm.data.export import ExportError, export_llava, main
from openpack_vlm.data.shards import ClipRecord

VISION = "<|vision_start|><|image_pad|><|vision_end|>"  # one image as the chat template writes it (before expansion)


def two_u1_text(entry: dict, system_message: str) -> str:
    """2U1's SupervisedDataset text for one entry (its code path, minus tokenisation)."""
    out = f"<|im_start|>system\n{system_message}<|im_end|>\n"
    roles = {"human": "user", "gpt": "assistant"}
    for turn in entry["conversations"]:
        value = re.sub(r"\n?" + re.escape("<image>") + r"\n?", VISION, turn["value"])
        out += f"<|im_start|>{roles[turn['from']]}\n{value}<|im_end|>\n"
    return out


def llama_factory_text(entry: dict) -> str:
    """LLaMA-Factory's qwen2_vl template + plugin text for one sharegpt entry."""
    out = f"<|im_start|>system\n{entry['system']}<|im_end|>\n"
    human, gpt = entry["conversations"]
    assert (human["from"], gpt["from"]) == ("human", "gpt")  # human in odd positions, gpt in even ones
    out += f"<|im_start|>user\n{human['value'].replace('<image>', VISION)}<|im_end|>\n<|im_start|>assistant\n"
    return out + f"{gpt['value']}<|im_end|>\n"


@pytest.fixture(scope="module")
def exported(pipeline_out, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "llava"
    assert main(["--data", str(pipeline_out), "--out", str(out)]) == 0
    return out


def test_layout_counts_and_frames_byte_for_byte(pipeline_out, exported):
    meta = json.loads((exported / "export.json").read_text())
    contract = json.loads((pipeline_out / "run.json").read_text())
    assert meta["answer_span"] == contract["data"]["answer_span"] == "shown"
    for split in ("train", "val", "test"):
        manifest = [json.loads(x) for x in (pipeline_out / split / "manifest.jsonl").read_text().splitlines()]
        llava = json.loads((exported / f"{split}.llava.json").read_text())
        share = json.loads((exported / f"{split}.sharegpt.json").read_text())
        assert meta["clips"][split] == len(llava) == len(share) == len(manifest) > 0
        assert sorted(e["id"] for e in llava) == sorted(r["clip_id"] for r in manifest)
        members = {}
        for shard in sorted((pipeline_out / split).glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
        for e, s in zip(llava, share):
            assert e["image"] == s["images"] and e["id"] == s["id"]
            assert sum(t["value"].count("<image>") for t in e["conversations"]) == len(e["image"])
            assert s["conversations"][0]["value"].count("<image>") == len(s["images"])
            for i, rel in enumerate(e["image"]):
                assert (exported / rel).read_bytes() == members[f"{e['id']}.f{i:02d}.jpg"]  # the shards' frames
    info = json.loads((exported / "dataset_info.json").read_text())
    assert set(info) == {"openpack_train", "openpack_val", "openpack_test"}
    for entry in info.values():
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "conversations", "images": "images", "system": "system"}
        assert (exported / entry["file_name"]).is_file()


def test_both_formats_give_the_text_training_renders(pipeline_out, exported, tiny_real_model_dir):
    """What each trainer feeds the model equals what this repo trains on (real Qwen2-VL chat template)."""
    from transformers import AutoProcessor

    from openpack_vlm.model.train_data import Collator

    processor = AutoProcessor.from_pretrained(tiny_real_model_dir)
    system = (exported / "system_prompt.txt").read_text().rstrip("\n")
    collator = Collator(processor, span=json.loads((exported / "export.json").read_text())["answer_span"])
    manifest = {json.loads(x)["clip_id"]: json.loads(x)
                for x in (pipeline_out / "test" / "manifest.jsonl").read_text().splitlines()}
    llava = json.loads((exported / "test.llava.json").read_text())
    share = json.loads((exported / "test.sharegpt.json").read_text())
    for e, s in zip(llava, share):
        ours = collator.texts([ClipRecord.from_json(manifest[e["id"]])])[0]
        assert llama_factory_text(s) == ours
        assert two_u1_text(e, system) == ours  # with 2U1's SYSTEM_MESSAGE set to system_prompt.txt (README)
        assert two_u1_text(e, "You are a helpful assistant.") != ours  # ... which is why the README says so


def test_pipeline_flag_and_bad_input(pipeline_out, tmp_path, capsys):
    import importlib

    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    data = tmp_path / "data"
    shutil.copytree(pipeline_out, data, ignore=shutil.ignore_patterns("samples"))
    root = json.loads((data / "summary.json").read_text())["root"]
    rc = importlib.import_module("data_pipeline").main(["--root", root, "--out", str(data),
                                                        "--export_llava", str(tmp_path / "x")])
    assert rc == 0  # a resumed run (every shard kept) that only exports
    assert "2U1" in capsys.readouterr().out
    assert json.loads((tmp_path / "x" / "export.json").read_text())["clips"]["test"] > 0

    assert main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 2
    assert "run.json" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["--data", str(data), "--out", str(tmp_path / "y"), "--splits", "holdout"]) == 2
    assert "unknown split(s) holdout" in capsys.readouterr().err


def test_failed_export_leaves_the_old_folder(pipeline_out, tmp_path, monkeypatch):
    out = tmp_path / "llava"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    calls = []

    def broken(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise ExportError("disk full (simulated)")
        return real(*a, **k)

    real = export_mod.turns
    monkeypatch.setattr(export_mod, "turns", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_llava(pipeline_out, out)
    assert [p.name for p in tmp_path.iterdir()] == ["llava"]  # no temporary folder left behind
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
