# Fresh machine: `make demo` runs the whole chain offline on CPU; `make test` runs the test suite.
PY ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo results vram devlog

install:
	bash scripts/install.sh

test: install
	$(PY) -m pytest -q

# synthetic root -> data_pipeline.py -> tiny LoRA run -> evaluate.py, into out/demo (fresh each time)
demo: install
	rm -rf out/demo
	bash scripts/demo.sh out/demo

# the repo's top-level results.json is a copy of a demo evaluation (its provenance block says which run)
results: demo
	cp out/demo/eval/results.json results.json.tmp && mv results.json.tmp results.json

vram:
	$(PY) -m openpack_vlm.vram

devlog:
	$(PY) scripts/devlog.py
