"""LLaMA-Factory's own dataset loader on an export of this repo (data/export.py): what it feeds the model.

Runs in a SEPARATE venv with LLaMA-Factory (its pins differ from ours), against a Qwen2-VL processor dir:

    python -m venv /tmp/lf && /tmp/lf/bin/pip install torch==2.13.0 && /tmp/lf/bin/pip install llamafactory
    python -m openpack_vlm.data.export --data out/demo/data --out /tmp/llava_demo
    python -c "from openpack_vlm.testing.tiny import build_tiny_model; build_tiny_model('/tmp/tinyreal', tokenizer='real')"
    /tmp/lf/bin/python scripts/llamafactory_check.py /tmp/tinyreal /tmp/llava_demo [openpack_val]

Prints the number of examples, the first one's token count, image-pad tokens, images and the trained (label) text,
then its decoded text with each image's 144 pads shortened.
"""
import json
import sys

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer


def main() -> int:
    model_dir, dataset_dir = sys.argv[1], sys.argv[2]
    dataset = sys.argv[3] if len(sys.argv) > 3 else "openpack_val"
    args = dict(stage="sft", do_train=True, model_name_or_path=model_dir, dataset=dataset, dataset_dir=dataset_dir,
                template="qwen2_vl", finetuning_type="lora", output_dir="/tmp/llamafactory_check", cutoff_len=4096,
                overwrite_cache=True, preprocessing_num_workers=1, report_to="none", per_device_train_batch_size=1)
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tm = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
    ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)["train_dataset"]
    ex, tok = ds[0], tm["tokenizer"]
    text = tok.decode(ex["input_ids"], skip_special_tokens=False)
    print(json.dumps({"examples": len(ds), "input_tokens": len(ex["input_ids"]),
                      "image_pad_tokens": text.count("<|image_pad|>"),
                      "images": len(ex["images"]) if "images" in ex else None,
                      "answer_trained": tok.decode([t for t in ex["labels"] if t != -100])}, indent=1))
    print(text.replace("<|image_pad|>" * 144, "<|image_pad|>x144"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
