"""The recipe sweep behind ARCHITECTURE.md §3's ablation table: a short LoRA run of a tiny Qwen2-VL variant on the
demo's data, with validation OCA / AA@1 / tIoU@0.5 every N steps through the product's Predictor.

    OMP_NUM_THREADS=2 python scripts/recipe_sweep.py --data D [--steps 300] [--eval_every 100] [--train lora_head]
        [--lr 5e-3] [--bs 2] [--base tiny-pretrained|DIR] [--rope_theta 1e6 --mrope 4,2,2] [--px 112]
        [--vdepth 2 --vdim 32 --hidden 64 --layers 2] --out ROW.json

It trains with a plain AdamW loop (warm-up 20 steps, cosine, clip 1.0 — the tiny recipe of openpack_vlm.model.train)
so that it can also build model variants train.py does not offer: another LM rope (``--rope_theta``, ``--mrope``),
another size, frames resized to ``--px`` square. ``--train``: lora_head (LoRA on the LM + lm_head: the tiny recipe),
head (lm_head only), +merger, +visual (the vision tower trained in full too), full (every weight). ``--base``: start
from a saved model (e.g. ``tiny-pretrained``) instead of building a random one. D: data_pipeline.py output (train and
val splits). The demo's recipe itself is measured through train.py by scripts/learning_curves.py.
"""
import argparse, json, time, random, math, sys, os
from pathlib import Path
import torch, numpy as np

from openpack_vlm.evaluation.selection import select_clips, load_clips, truth_ids
from openpack_vlm.model.train import answer_only_loss
from openpack_vlm.model.train_data import Collator
from openpack_vlm.model.predict import Predictor
from openpack_vlm.labels import to_id
from openpack_vlm.metrics import span_iou as temporal_iou

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--bs", type=int, default=2)
p.add_argument("--lr", type=float, default=5e-3)
p.add_argument("--train", default="lora_head")  # lora_head | +merger | +visual | full
p.add_argument("--rope_theta", type=float, default=1e6)
p.add_argument("--mrope", default="4,2,2")
p.add_argument("--vdepth", type=int, default=2)
p.add_argument("--vdim", type=int, default=32)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--px", type=int, default=0)  # processor max_pixels side (0 = real processor)
p.add_argument("--eval_every", type=int, default=100)
p.add_argument("--nval", type=int, default=28)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--base", default="")
p.add_argument("--out", required=True)
a = p.parse_args()
torch.manual_seed(a.seed); random.seed(a.seed); np.random.seed(a.seed)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from openpack_vlm.testing.tiny import real_processor, QWEN_SPECIAL_TOKENS
import copy
proc = copy.deepcopy(real_processor())
if a.px:
    for ip in (proc.image_processor,):
        ip.min_pixels = ip.max_pixels = a.px * a.px
        ip.size = {"shortest_edge": a.px * a.px, "longest_edge": a.px * a.px}
tok = proc.tokenizer
ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
mr = [int(x) for x in a.mrope.split(",")]
heads = 4
cfg = Qwen2VLConfig(
    text_config=dict(vocab_size=151936, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers,
                     num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
                     rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta, "mrope_section": mr},
                     bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                     tie_word_embeddings=True),
    vision_config=dict(depth=a.vdepth, embed_dim=a.vdim, hidden_size=a.hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2),
    tie_word_embeddings=True, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
model = Qwen2VLForConditionalGeneration(cfg)
if a.base:
    from transformers import AutoModelForImageTextToText
    from openpack_vlm.model.loading import resolve_model_id

    model = AutoModelForImageTextToText.from_pretrained(resolve_model_id(a.base))
from peft import LoraConfig, get_peft_model
mods = []
if a.train == "head":
    for n, p_ in model.named_parameters():
        p_.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
elif a.train != "full":
    if "head" in a.train or a.train.startswith("+"):
        mods.append("lm_head")
    if a.train in ("+merger", "+visual"):
        mods.append("merger")
    if a.train == "+visual":
        mods = ["lm_head", "visual"]
    lc = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                    target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
                    modules_to_save=mods or None, task_type="CAUSAL_LM")
    model = get_peft_model(model, lc)
ntr = sum(p.numel() for p in model.parameters() if p.requires_grad)
print("trainable", ntr, flush=True)

data = Path(a.data)
train = load_clips(data, "train", select_clips(data, "train", None))
val = load_clips(data, "val", select_clips(data, "val", a.nval))
col = Collator(proc)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
rng = random.Random(a.seed)


def evaluate():
    model.eval()
    pr = Predictor(model, proc)
    oca = aa = ti = 0
    preds = []
    for i in range(0, len(val), 8):
        b = val[i:i + 8]
        res = pr.predict_batch([(fr, r.frame_indices, r.clip_id) for r, fr in b])
        for (r, _), x in zip(b, res):
            t = truth_ids(r)
            pd = x.prediction
            oca += to_id(pd.dominant_operation) == t["op"]
            aa += to_id(pd.anticipated_next_operation) == t["next"]
            ti += (temporal_iou((pd.temporal_segment.start_frame, pd.temporal_segment.end_frame), t["span"]) or 0) >= 0.5
            preds.append(pd.dominant_operation)
    model.train()
    n = len(val)
    from collections import Counter
    return dict(oca=oca / n, aa=aa / n, tiou=ti / n, top=Counter(preds).most_common(2))


hist = []
t0 = time.time()
order = []
model.train()
losses = []
for step in range(1, a.steps + 1):
    if len(order) < a.bs:
        o = list(range(len(train))); rng.shuffle(o); order += o
    batch = [train[order.pop()] for _ in range(a.bs)]
    inp = col(batch)
    loss = answer_only_loss(model, inp)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(); sched.step(); opt.zero_grad()
    losses.append(loss.item())
    if step % a.eval_every == 0 or step == a.steps:
        e = evaluate()
        e.update(step=step, loss=float(np.mean(losses[-a.eval_every:])), t=round(time.time() - t0, 1))
        print(e, flush=True)
        hist.append(e)
from openpack_vlm.io_utils import write_json

write_json(a.out, dict(args=vars(a), hist=hist, threads=torch.get_num_threads()))
