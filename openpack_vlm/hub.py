"""Publish a trained adapter on the Hugging Face Hub, and load adapters by Hub id.

    python -m openpack_vlm.hub push R --repo-id USER/NAME [--results E/results.json] [--private]
    python -m openpack_vlm.hub push R --repo-id USER/NAME --folder X --dry-run    # build X, upload nothing

``push`` uploads one folder (``huggingface_hub.upload_folder``), laid out so that the repo itself is an adapter dir
the predictor loads as is:

    adapter_config.json, adapter_model.safetensors   the LoRA (R/adapter)
    run.json       the run contract (data, training, evaluation sections): K, sampler, answer span, tuned fusion
                   weight and temperature; its grammar entry names grammar.json beside it (sha256 checked on load)
    grammar.json   the operation grammar the run was trained and evaluated with
    results.json   the evaluation the card's numbers come from
    README.md      the model card (``model_card``): data, split users, metrics with 95 % intervals, base model,
                   training settings and commit, all read from results.json and run.json

``ADAPTER_PATH`` / ``--adapter`` accept ``USER/NAME`` (or ``USER/NAME@REVISION``): ``model.loading.resolve_adapter``
downloads it once into the HF cache (``snapshot_download``; with ``HF_HUB_OFFLINE=1`` only the cache is read).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cli import build_parser, parse, setting
from .contract import RUN_FILE, ContractError, RunContract, file_sha256, find_run
from .io_utils import atomic_path, one_line
from .model.loading import HUB_ID, ModelLoadError, adapter_dir, hub_id

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class HubError(ValueError):
    """An adapter cannot be published as asked (one-line message)."""


# ------------------------------------------------------------------------------------------------------ the card
def _pct(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(intervals: dict, metric: str) -> str:
    lo_hi = intervals.get(metric)
    return f" [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi and None not in lo_hi else ""


def _row(label: str, scores: dict | None, intervals: dict | None = None) -> str:
    if not scores:
        return ""
    cells = [f"{_pct(scores.get(m))}{_ci(intervals or {}, m)}" for m in ("OCA", "tIoU@0.5", "AA@1")]
    return f"| {label} | " + " | ".join(cells) + " |\n"


def model_card(contract: RunContract, results: dict, repo_id: str):
    """The README.md of a pushed adapter (``huggingface_hub.ModelCard``): what it was trained and measured on."""
    from huggingface_hub import ModelCard, ModelCardData

    prov = results.get("provenance", {})
    train = contract.training
    base = (train.model_id if train else None) or prov.get("model_id") or "unknown"
    splits = contract.data.splits or {}
    synthetic = bool(results.get("synthetic"))
    data_kind = prov.get("data", "unknown")
    meta = ModelCardData(
        base_model=base if hub_id(base) else None,  # the Hub accepts only repo ids (a local or in-code model is none)
        library_name="peft", license="cc-by-nc-sa-4.0", pipeline_tag="video-text-to-text",
        tags=["lora", "qwen2-vl", "openpack", "temporal-action-segmentation", "openpack-vlm"]
        + (["synthetic-data"] if synthetic else []))
    ft = results.get("finetuned_model")
    iv = results.get("intervals", {})
    kp = results.get("keypoint_baseline")
    rows = (_row("base model (adapter off)", results.get("base_model"), iv.get("base_model"))
            + _row("fine-tuned", ft, iv.get("finetuned_model"))
            + _row("fine-tuned + grammar", results.get("variants", {}).get("finetuned_grammar"),
                   iv.get("finetuned_grammar"))
            + _row("majority class / whole clip", results.get("baselines", {}).get("majority_class"))
            + _row("keypoint baseline (not a VLM)", kp, (kp or {}).get("intervals")))
    tl = results.get("timeline", {}).get("finetuned_model") or {}
    ev = contract.evaluation
    settings = train.settings if train else {}
    keep = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
            "lr_scheduler_type", "lora_r", "lora_alpha", "lora_dropout", "modules_to_save", "vision_lora",
            "quantization", "seed")
    warning = (f"\n> **{results['note']}**\n" if results.get("note") else "")
    text = f"""---
{meta.to_yaml()}
---

# {repo_id.split('/')[-1]}

A LoRA adapter for **{base}** made with openpack-vlm: given the sampled frames of a 5-second
clip of a packaging worker (OpenPack), it answers the dominant operation, its frame span in the clip and the
operation that comes next, as JSON.
{warning}
## Measured on

- data: **{data_kind}**{" (synthetic stand-ins in the OpenPack format, not OpenPack recordings)" if data_kind != "real" else " (OpenPack)"}; frames: {contract.data.source} (`data.source`), K = {contract.data.k} per clip, answer span format `{contract.data.answer_span}`
- split users: {"; ".join(f"{k} {' '.join(v)}" for k, v in splits.items())}
- evaluated: {results.get("n_clips")} {results.get("selection", {}).get("split", "test")} clips ({results.get("selection", {}).get("rule", "")})
- base model: `{prov.get("model_id", base)}`, quantization `{prov.get("quantization")}`; commit `{prov.get("git_commit")}`{" (uncommitted changes)" if prov.get("git_dirty") else ""}; {prov.get("date")}; peak memory {prov.get("memory", {}).get("bytes", 0) / 1e9:.2f} GB ({prov.get("memory", {}).get("kind")}), {prov.get("torch_threads")} torch threads

| system | OCA | tIoU@0.5 | AA@1 |
| --- | --- | --- | --- |
{rows}
95 % bootstrap intervals in brackets. OCA: dominant operation right; tIoU@0.5: span IoU ≥ 0.5; AA@1: next operation
right. Timeline of a whole session (fine-tuned): macro-F1 {_pct(tl.get("macro_f1"))}, edit {_pct(tl.get("edit"))}.
{f"Grammar fusion weight {ev.fuse_weight} ({ev.fuse_mode}, tuned on {ev.tuned_on}); confidence temperature {ev.temperature}." if ev else ""}

## Training

`{json.dumps({k: settings[k] for k in keep if k in settings}, sort_keys=True)}`

## Use

```bash
ADAPTER_PATH={repo_id} MODEL_ID={base} python serve.py          # the HTTP API (POST /predict, /timeline)
python evaluate.py --data D --adapter {repo_id} --model {base}  # score it again on your data
```

```python
from openpack_vlm.model.predict import Predictor
p = Predictor.from_pretrained("{base}", adapter="{repo_id}")  # run.json + grammar.json come with it
```

Files: the adapter, `run.json` (the run contract the predictor applies), `grammar.json`, `results.json`.
Licence: CC BY-NC-SA 4.0, as the OpenPack data it is trained on.
"""
    return ModelCard(text)


# ---------------------------------------------------------------------------------------------------- the folder
def _find_results(contract: RunContract, results: str | os.PathLike | None) -> Path:
    if results is not None:
        p = Path(results)
    else:
        ev = contract.evaluation
        if ev is None or not ev.eval_dir:
            raise HubError(f"{contract.where} has no evaluation: run evaluate.py on the adapter first, or pass "
                           "--results E/results.json")
        p = Path(ev.eval_dir) / "results.json"
    if not p.is_file():
        raise HubError(f"results file not found: {p} (pass --results E/results.json)")
    return p


def build_folder(run_dir: str | os.PathLike, dest: str | os.PathLike, repo_id: str,
                 results: str | os.PathLike | None = None) -> Path:
    """Write exactly the folder ``push`` uploads into ``dest`` (replaced atomically)."""
    if not HUB_ID.match(repo_id):
        raise HubError(f"--repo-id {repo_id!r} is not USER/NAME")
    run_dir = Path(run_dir)
    try:
        adapter = adapter_dir(run_dir)
    except ModelLoadError as e:
        raise HubError(str(e)) from None
    run_file = find_run(adapter)
    if run_file is None:
        raise HubError(f"no {RUN_FILE} beside {adapter}: push a run made by openpack_vlm.model.train")
    try:
        contract = RunContract.load(run_file)
        res_path = _find_results(contract, results)
        res = json.loads(res_path.read_text())
        if contract.evaluation is None and (res_path.parent / RUN_FILE).is_file():
            contract.evaluation = RunContract.load(res_path.parent / RUN_FILE).evaluation  # evaluate.py wrote it
        grammar = contract.grammar_path()
    except (ContractError, json.JSONDecodeError) as e:
        raise HubError(one_line(e)) from None
    with atomic_path(dest, directory=True) as tmp:
        for name in ADAPTER_FILES:
            if not (adapter / name).is_file():
                raise HubError(f"{adapter / name} missing")
            shutil.copyfile(adapter / name, tmp / name)
        if grammar is not None:
            if not grammar.is_file():
                raise HubError(f"the run's grammar {grammar} is missing")
            shutil.copyfile(grammar, tmp / "grammar.json")
            contract.data.grammar = {"file": "grammar.json", "sha256": file_sha256(tmp / "grammar.json")}
        contract.path = None
        contract.save(tmp)
        shutil.copyfile(res_path, tmp / "results.json")
        model_card(contract, res, repo_id).save(tmp / "README.md")
    return Path(dest)


def push(run_dir, repo_id: str, results=None, private: bool = False, folder=None) -> str:
    """Build the folder and upload it (``create_repo`` + ``upload_folder``); returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory() as td:
        path = build_folder(run_dir, Path(folder) if folder else Path(td) / "push", repo_id, results)
        create_repo(repo_id, private=private, exist_ok=True)
        info = upload_folder(repo_id=repo_id, folder_path=path, commit_message="openpack-vlm adapter")
    return str(getattr(info, "commit_url", info))


@dataclass
class PushConfig:
    """Settings of ``python -m openpack_vlm.hub push``."""

    repo_id: str = setting(None, "Hub repo to create or update: USER/NAME")
    results: str | None = setting(None, "the evaluation's results.json (default: the one the run contract's "
                                        "evaluation section points at)")
    private: bool = setting(False, "create the repo private")
    folder: str | None = setting(None, "also keep the built folder here")
    dry_run: bool = setting(False, "build the folder (--folder) and upload nothing")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "push":
        print("usage: python -m openpack_vlm.hub push RUN_DIR --repo-id USER/NAME [--results E/results.json] "
              "[--private] [--folder X] [--dry-run]", file=sys.stderr)
        return 2
    parser = build_parser(PushConfig, prog="python -m openpack_vlm.hub push", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="training run dir R (R/adapter, R/run.json)")
    try:
        cfg, extra = parse(parser, argv[1:])
        if not cfg.repo_id:
            raise HubError("--repo-id USER/NAME is required")
        if cfg.dry_run:
            if not cfg.folder:
                raise HubError("--dry-run needs --folder X (where to build)")
            build_folder(extra.run_dir, cfg.folder, cfg.repo_id, cfg.results)
            print(f"built {cfg.folder} (not uploaded): " + ", ".join(sorted(os.listdir(cfg.folder))))
            return 0
        url = push(extra.run_dir, cfg.repo_id, cfg.results, cfg.private, cfg.folder)
    except Exception as e:  # noqa: BLE001 - HubError, OSError and huggingface_hub's HTTP errors (auth, name taken)
        if not isinstance(e, (HubError, OSError)) and type(e).__module__.split(".")[0] != "huggingface_hub":
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"pushed {extra.run_dir} to https://huggingface.co/{cfg.repo_id} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
