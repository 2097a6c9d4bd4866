"""QLoRA fine-tuning of Qwen2-VL on the data pipeline's WebDataset shards.

    python -m openpack_vlm.model.train --data D --out R [--model tiny] [--quantization none] [--max-steps N] ...

Reads ``D/train/shard-*.tar`` as a stream (never the whole set in memory), builds each sample's chat with
``prompt.build_messages(record.frame_indices, record.truth)`` exactly as the pipeline wrote it, collates through the
processor with labels = -100 everywhere except the assistant's JSON answer and its ``<|im_end|>``, and trains LoRA
with ``transformers.Trainer``. Writes::

    R/checkpoint-*/    every save_steps (last save_total_limit kept); a rerun with the same R resumes from the last
    R/adapter/         the LoRA adapter only (PEFT format)
    R/grammar.json     copy of D/grammar.json (next-operation prior used by the predictor)
    R/run.json         the run contract: D/run.json's data section + this run's training section (contract.py)
    R/config.json      the run config (TrainConfig + ModelConfig + world size + versions)
    R/train_summary.json  steps, losses, runtime and the measured peak memory
    R/logs/            TensorBoard event files

Two GPUs (Kaggle 2xT4)::

    torchrun --nproc_per_node 2 -m openpack_vlm.model.train --data D --out R
    # or: accelerate launch --num_processes 2 -m openpack_vlm.model.train --data D --out R

Each process loads the 4-bit model on its own GPU (device_map = LOCAL_RANK), DDP runs with
find_unused_parameters=False (every LoRA weight gets a gradient each step; non-reentrant checkpointing), and every
(process, dataloader worker) pair reads its own subset of the shards, so no sample is read twice per pass.
The effective batch is per_device_train_batch_size x gradient_accumulation_steps x processes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..cli import build_parser, setting
from ..contract import RUN_FILE, ContractError, RunContract, TrainingSection, assumed_contract
from ..data.shards import shard_paths
from ..io_utils import atomic_path, write_atomic, write_json
from ..platform_check import Platform, peak_memory
from ..testing.tiny import is_tiny
from . import frame_head
from .loading import REAL_MODEL_ID, ModelConfig, ModelLoadError, load_model, pick_dtype, trainable_summary
from .train_data import IGNORE_INDEX, Collator, TrainError, make_stream, shuffled_rows

# The tiny random model (0.25M params, hidden 64) needs a different recipe than 2B to learn in ~100 CPU steps:
# its random lm_head has tiny logits, and with LoRA alone the loss stalls at ~5.3 nats (measured: 0 % valid JSON after
# 60 steps), so lm_head is trained in full (a 33k-param copy; for 2B it would be 233M params + Adam states: never);
# a larger LR and the usual clip norm 1.0 instead of QLoRA's 0.3 (measured: 100 % valid JSON after 120 steps).
TINY_RECIPE = {"learning_rate": 5e-3, "modules_to_save": ["lm_head"], "max_grad_norm": 1.0}


@dataclass
class TrainConfig:
    """One training run. Defaults = the real QLoRA run of Qwen2-VL-2B on a 16 GB T4 (or A100). The CLI's flags are
    generated from these fields (``--max_steps`` / ``--max-steps``; short aliases such as ``--model``, ``--lr``)."""

    data: str = setting("data", "data_pipeline.py output dir D (reads D/train/shard-*.tar and D/run.json)")
    out: str = setting("runs/qlora", "run dir R; rerunning with the same dir resumes from its last checkpoint")
    model_id: str = setting(REAL_MODEL_ID, 'base model: hub id, local dir, or "tiny"', aliases=["--model"])
    quantization: str = setting("4bit", "4bit needs CUDA; none for CPU / tiny", choices=["4bit", "none"])
    dtype: str = setting("auto", "bf16 where supported (A100), fp16 on T4, fp32 on CPU",
                         choices=["auto", "bf16", "fp16", "fp32"])
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha (2r, the usual QLoRA scaling)")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    modules_to_save: list[str] | None = setting(
        None, f"modules trained in full besides LoRA; unset = none, {list(TINY_RECIPE['modules_to_save'])} for the "
        "tiny model (for 2B lm_head would be 233M params + Adam states: never); the flag alone = none", nargs="*")
    vision_lora: bool = setting(False, "also LoRA on the vision tower's attention + MLP and the merger "
                                "(2U1's --vision_lora; for skeleton frames, far from the photos the tower saw); "
                                "recorded in run.json's training section")
    per_device_train_batch_size: int = setting(2, "clips per step per GPU (2 x 8 frames x 144 visual tokens ~ 2.8k "
                                               "tokens: fits a T4 in 4-bit)", aliases=["--batch-size"])
    gradient_accumulation_steps: int = setting(8, "effective batch = this x batch size x GPUs (16 clips per GPU)",
                                               aliases=["--grad-accum"])
    learning_rate: float | None = setting(None, f"unset = 2e-4 (the QLoRA paper's LR for small models); "
                                          f"{TINY_RECIPE['learning_rate']} for the tiny model", aliases=["--lr"])
    lr_scheduler_type: str = setting("cosine", "transformers scheduler name", aliases=["--scheduler"])
    warmup_steps: int = setting(20, "~3 % of max_steps")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float | None = setting(None, f"unset = 0.3 (QLoRA paper); {TINY_RECIPE['max_grad_norm']} for "
                                          "the tiny model")
    max_steps: int = setting(600, "optimizer steps (~9.6k clips seen at batch 16)")
    save_steps: int = setting(50, "checkpoint every N steps (Kaggle sessions end at 9-12 h: ~15 min on a T4)")
    save_total_limit: int = setting(3, "checkpoints kept")
    logging_steps: int = setting(10, "log every N steps")
    seed: int = setting(42, "seed of the model init, the shuffle and dropout")
    shuffle_labels: bool = setting(False, "NEGATIVE CONTROL: train each clip on the answer (and frame labels) of "
                                   "another training clip (a fixed seeded permutation of the split's); a recipe "
                                   "that still beats the majority class learns from a leak, not from the frames")
    span_loss_weight: float = setting(1.0, "loss weight of the answer's digit tokens (its frame numbers) against "
                                      "its other tokens; 1 = the plain token average (needs the answer-only loss)")
    frame_loss_weight: float = setting(1.0, "weight of the frame head's loss (which operation each shown frame "
                                       "shows; model/frame_head.py) beside the answer's token loss; 0 = no frame "
                                       "head (the span then comes from the answer's frame numbers)")
    shuffle_buffer: int = setting(256, "samples held for shuffling (~256 x 8 JPEG frames decoded: ~0.3 GB)")
    num_workers: int = setting(2, "dataloader processes decoding JPEGs and running the processor")
    gradient_checkpointing: bool = setting(True, "recompute activations (~5x less memory; required for batch 2 on a "
                                           "T4); --no_gradient_checkpointing turns it off")
    full_logits: bool = setting(False, "project every position onto the vocabulary (the Trainer's default loss); "
                                "off = lm_head only on the ~50 answer positions (full logits were 4.4 GB of the "
                                "10.6 GB peak on the 2B architecture)")
    report_to: list[str] = setting(default_factory=lambda: ["tensorboard"], help='e.g. "tensorboard" or "none"')
    optim: str = setting("adamw_torch", "LoRA params are few (~18M): plain AdamW states are ~0.15 GB")
    attn_implementation: str = setting("sdpa", "attention kernel")
    device: str = setting("auto", "cuda:LOCAL_RANK when CUDA, else cpu; cpu + 4bit runs bitsandbytes' CPU backend")

    def __post_init__(self):
        # unset = the real run's value; parse_args fills the tiny recipe in first for a tiny model
        self.learning_rate = 2e-4 if self.learning_rate is None else self.learning_rate
        self.max_grad_norm = 0.3 if self.max_grad_norm is None else self.max_grad_norm
        self.modules_to_save = list(self.modules_to_save or ())
        self.report_to = [x for x in self.report_to if x != "none"] or ["none"]
        if self.max_steps <= 0:
            raise TrainError(f"max_steps must be > 0 (got {self.max_steps})")
        if not (self.span_loss_weight > 0 and math.isfinite(self.span_loss_weight)):
            raise TrainError(f"span_loss_weight must be a positive number (got {self.span_loss_weight})")
        if self.span_loss_weight != 1.0 and self.full_logits:
            raise TrainError("--span_loss_weight needs the answer-only loss (drop --full_logits)")
        if not (self.frame_loss_weight >= 0 and math.isfinite(self.frame_loss_weight)):
            raise TrainError(f"frame_loss_weight must be a number >= 0 (got {self.frame_loss_weight})")
        if self.frame_loss_weight > 0 and self.full_logits:
            raise TrainError("the frame head needs the answer-only loss (drop --full_logits, or --frame_loss_weight 0)")

    @property
    def frame_head(self) -> bool:
        return self.frame_loss_weight > 0

    @property
    def answer_logits_only(self) -> bool:
        return not self.full_logits

    def model_config(self) -> ModelConfig:
        """The ModelConfig fields this run sets (same names), the rest at ModelConfig's defaults."""
        shared = {f.name: getattr(self, f.name) for f in fields(ModelConfig) if f.name in TRAIN_FIELDS}
        return ModelConfig(**{**shared, "modules_to_save": tuple(self.modules_to_save), "frame_head": self.frame_head})

    def to_json(self) -> dict:
        return asdict(self)




# ------------------------------------------------------------------------------------------------------------- training
def digit_token_ids(tokenizer) -> list[int]:
    """Ids of the vocabulary entries made of digits only (the answer's frame numbers: one digit per token in Qwen's
    BPE, merged digit runs in the tiny 512-token one)."""
    return sorted(i for t, i in tokenizer.get_vocab().items() if t and t.isdigit())


def answer_only_loss(model, inputs: dict, num_items_in_batch=None, weighted_ids=None, weight: float = 1.0):
    """The causal-LM loss the model computes from ``labels``, with lm_head applied only where it is needed.

    Position p predicts token p+1, so only positions whose next label is trained (the answer JSON + <|im_end|>) are
    projected onto the vocabulary (``logits_to_keep`` as a boolean mask); every other label is -100 and contributes
    nothing, so the value and the gradients equal the full computation (tests/test_train.py checks it). Reduction as
    transformers' ForCausalLMLoss: sum / ``num_items_in_batch`` when given (token average over the accumulated
    batch), else the mean over this batch's trained tokens. ``weighted_ids`` / ``weight``: target tokens among these
    ids count ``weight`` times (``--span_loss_weight``; the denominators stay token counts, so weight 1 is exact)."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    if targets.numel() == 0:
        raise TrainError("a batch has no trained answer tokens (all labels are -100)")
    logits = model(**inputs, logits_to_keep=keep).logits.float()
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.to(logits.device)
    if weighted_ids is not None and weight != 1.0:
        ce = F.cross_entropy(logits, targets, reduction="none")
        ids = torch.as_tensor(list(weighted_ids), device=targets.device)
        loss = (ce * torch.where(torch.isin(targets, ids), weight, 1.0)).sum()
    else:
        loss = F.cross_entropy(logits, targets, reduction="sum")
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return loss / num_items_in_batch
    return loss / targets.numel()


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def training_arguments(cfg: TrainConfig, use_cuda: bool, compute_dtype):
    import torch
    from transformers import TrainingArguments

    # the settings TrainConfig shares with TrainingArguments by name (batch, accumulation, LR, schedule, steps, seed...)
    same = {k: getattr(cfg, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                         "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
                                         "max_grad_norm", "max_steps", "save_steps", "save_total_limit",
                                         "logging_steps", "seed", "optim")}
    return TrainingArguments(
        output_dir=cfg.out,
        **same,
        save_strategy="steps",
        logging_strategy="steps",
        logging_first_step=True,
        data_seed=cfg.seed,
        bf16=use_cuda and compute_dtype == torch.bfloat16,
        fp16=use_cuda and compute_dtype == torch.float16,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient every step
        remove_unused_columns=False,  # the collator's pixel_values / image_grid_thw must reach the model
        dataloader_num_workers=cfg.num_workers,
        dataloader_pin_memory=use_cuda,
        ignore_data_skip=True,  # the stream is reseeded from the resumed step instead of replaying batches
        use_cpu=not use_cuda,
        report_to=list(cfg.report_to),
        disable_tqdm=False,
    )


def data_contract(data: Path) -> RunContract:
    """The data's run contract (D/run.json), which the run carries on; data made before contracts existed gets the
    pipeline's defaults, with a warning."""
    if (data / RUN_FILE).is_file():
        try:
            return RunContract.load(data)
        except ContractError as e:
            raise TrainError(str(e)) from None
    return assumed_contract(str(data))


def train(cfg: TrainConfig, callbacks: list | None = None) -> Path:
    """Run (or resume) one training run; returns the run dir R."""
    import torch
    from transformers import Trainer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    data, out = Path(cfg.data), Path(cfg.out)
    if cfg.quantization == "4bit" or str(cfg.device).startswith("cuda"):
        problem = Platform.detect().problem()  # before minutes of data and model loading
        if problem:
            raise TrainError(problem)
    try:
        paths = shard_paths(data / "train")
    except FileNotFoundError:
        raise TrainError(f"no training shards: expected {data / 'train' / 'shard-*.tar'} (run data_pipeline.py)") from None
    contract = data_contract(data)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "logs")  # transformers 5 reads the TB dir from here

    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    resumed_step = 0
    if last is not None:
        resumed_step = json.loads((Path(last) / "trainer_state.json").read_text()).get("global_step", 0)
        if resumed_step >= cfg.max_steps:
            raise TrainError(f"{last} is already at step {resumed_step} >= max_steps {cfg.max_steps}; "
                             "raise --max-steps or use a new --out")

    set_seed(cfg.seed)
    mcfg = cfg.model_config()
    model, processor = _load(mcfg)
    use_cuda = next(model.parameters()).is_cuda

    compute_dtype = pick_dtype(cfg.dtype, "cuda" if use_cuda else "cpu")
    args = training_arguments(cfg, use_cuda, compute_dtype)
    # a resumed run draws a fresh shuffle of the (infinite) stream instead of replaying the consumed batches
    stream = make_stream(paths, buffer=cfg.shuffle_buffer, seed=cfg.seed + resumed_step,
                         rank=args.process_index, world_size=args.world_size)
    others = shuffled_rows(data, cfg.seed) if cfg.shuffle_labels else None
    collator = Collator(processor, truth_of={c: o["truth"] for c, o in others.items()} if others else None,
                        span=contract.data.answer_span, frame_targets=cfg.frame_head,
                        frame_ops_of={c: o.get("frame_ops") for c, o in others.items()} if others else None)
    vision_ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")]

    span_ids = digit_token_ids(processor.tokenizer) if cfg.span_loss_weight != 1.0 else None

    class StreamTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not cfg.answer_logits_only or return_outputs:
                self.loss_is_scaled_for_ga = None  # the Trainer's own rule
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = inputs.pop("frame_targets", None)
            # the LM's final hidden states are captured only when a frame head reads them
            with frame_head.final_hidden(model) if targets is not None else contextlib.nullcontext([]) as hidden:
                loss = answer_only_loss(model, inputs, num_items_in_batch, weighted_ids=span_ids,
                                        weight=cfg.span_loss_weight)
            scaled = num_items_in_batch is not None  # sum / items of the whole accumulated batch
            if scaled and self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                # the items were counted over every process and DDP averages the gradients: undo its 1/W (as the
                # Trainer's own compute_loss does)
                loss = loss * self.accelerator.num_processes
            if targets is not None:
                f_loss, f_acc = frame_head.frame_loss(model, hidden[0], inputs["input_ids"], targets, *vision_ids)
                self._frame_log.append((float(f_loss.detach()), float(f_acc)))
                # a per-micro-batch mean: averaged over the accumulation steps here when the Trainer will not
                loss = loss + cfg.frame_loss_weight * f_loss / (self.current_gradient_accumulation_steps if scaled else 1)
            self.loss_is_scaled_for_ga = scaled
            return loss

        def log(self, logs, *args, **kwargs):
            if self._frame_log and "loss" in logs:  # the frame head's share, beside the Trainer's total loss
                logs["frame_loss"] = round(sum(x for x, _ in self._frame_log) / len(self._frame_log), 4)
                logs["frame_acc"] = round(sum(a for _, a in self._frame_log) / len(self._frame_log), 4)
                self._frame_log.clear()
            super().log(logs, *args, **kwargs)

        def get_train_dataloader(self):
            # our stream splits itself across processes and workers; accelerate's IterableDatasetShard on top
            # would drop (n-1)/n of each reader's samples, and batch dispatching cannot split pixel_values.
            from torch.utils.data import DataLoader

            return DataLoader(
                stream,
                batch_size=self.args.per_device_train_batch_size,
                collate_fn=collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
                persistent_workers=self.args.dataloader_num_workers > 0,
            )

    trainer = StreamTrainer(model=model, args=args, train_dataset=stream, data_collator=collator,
                            callbacks=callbacks)
    trainer._frame_log = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    runtime = time.time() - t0

    if trainer.is_world_process_zero():
        with atomic_path(out / "adapter", directory=True) as tmp:
            trainer.model.save_pretrained(tmp)
        if (data / "grammar.json").is_file():
            write_atomic(out / "grammar.json", (data / "grammar.json").read_bytes())
        contract.training = TrainingSection(model_id=cfg.model_id, quantization=cfg.quantization,
                                            settings=cfg.to_json(), data_dir=str(data), vision_lora=cfg.vision_lora,
                                            frame_head=cfg.frame_head)
        contract.evaluation = None  # a new adapter: any earlier tuned weight belonged to other weights
        contract.save(out)
        write_json(out / "config.json", {
            "train": cfg.to_json(),
            "model": mcfg.to_json(),
            "world_size": args.world_size,
            "compute_dtype": str(compute_dtype).replace("torch.", ""),
            "versions": _versions(),
        })
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

        write_json(out / "train_summary.json", {
            "global_step": trainer.state.global_step,
            "resumed_from": str(last) if last else None,
            "train_loss": result.training_loss,
            "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None,
            "runtime_s": round(runtime, 2),
            "peak_memory": peak_memory(),
            "params": trainable_summary(trainer.model),
            "shards": [p.name for p in paths],
        })
    return out


def _load(mcfg: ModelConfig):
    try:
        return load_model(mcfg, for_training=True)
    except ModelLoadError as e:
        raise TrainError(str(e)) from None


# ------------------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags (one flag per field, generated by cli.build_parser); for a tiny model
    (``tiny`` or its dir) the flags left unset take TINY_RECIPE's values."""

    parser = build_parser(TrainConfig, prog="python -m openpack_vlm.model.train", description=__doc__.split("\n\n")[0])
    given = vars(parser.parse_args(argv))
    if is_tiny(given["model_id"]):
        given.update({k: v for k, v in TINY_RECIPE.items() if given.get(k) is None})
    return TrainConfig(**given)


def _close_process_group(wait: bool) -> None:
    """Under torchrun the Trainer opens a gloo/NCCL process group and never closes it; a rank that exits with it open
    can abort in the group's C++ threads ("terminate called without an active exception", SIGABRT), failing the whole
    launch after training succeeded. After a success both ranks meet at a barrier first so neither tears down while the
    other still talks to it; after an error no barrier (the other rank may never arrive)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        out = train(cfg)
    except (TrainError, ModelLoadError) as e:
        _close_process_group(wait=False)
        print(f"error: {e}", file=sys.stderr)
        return 2
    _close_process_group(wait=True)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 writes the run's files and reports
        return 0
    summary = json.loads((out / "train_summary.json").read_text())
    print(f"wrote {out / 'adapter'}  (step {summary.get('global_step')}, train loss {summary.get('train_loss')}, "
          f"peak memory {summary.get('peak_memory', {}).get('bytes', 0) / 2**30:.2f} GiB "
          f"[{summary.get('peak_memory', {}).get('kind')}])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

