# Fresh machine: `make demo` runs the whole chain offline on CPU; `make test` runs the test suite.
PY ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Python's default, bytecode caching (some machines' environments turn it off): otherwise every test worker, decoder
# process and CLI subprocess compiles the package again and pytest re-rewrites every test module (collection 8.0 s ->
# 5.4 s per pytest process on 2 cores, from the second run on); __pycache__/ is git-ignored
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install test test-fast demo results vram devlog

install:
	bash scripts/install.sh

# the README's full suite (what CI runs through .ci/run), one process per core (pytest-xdist; tests/conftest.py builds
# each shared fixture once for all workers and hands the long tests out first; clean clone, 2 cores: 7.5 min at 709fcd8, was 19)
test: install
	$(PY) -m pytest -q -n auto --dist worksteal --durations=15

# the development loop: everything but the tests marked slow (training runs, real servers, notebook, demo); no
# install. One process more than cores (the serving tests wait on decoder processes, timeouts and sleeps, and a third
# process uses that time), each test file on one process (a file's heavy imports — the Qwen2-VL model code, gradio,
# mediapipe — load in one process, not in every one). Clean clone, 2 cores: 113 s, then 110 s (709fcd8; was 2.6 min);
# docs/measurements.md
test-fast:
	$(PY) -m pytest -q -m "not slow" -n $$(( $$(nproc) + 1 )) --dist loadfile --durations=10

# synthetic keypoints -> skeleton frames -> data_pipeline.py -> tiny-real LoRA run -> evaluate.py, into out/demo (fresh each time)
demo: install
	rm -rf out/demo
	bash scripts/demo.sh out/demo

# the repo's top-level results.json is a copy of a demo evaluation (its provenance block says which run)
results: demo
	cp out/demo/eval/results.json results.json.tmp && mv results.json.tmp results.json

vram:
	$(PY) -m openpack_vlm.model.vram

devlog:
	$(PY) scripts/devlog.py
