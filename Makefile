# Fresh machine: `make demo` runs the whole chain offline on CPU; `make test` runs the test suite.
PY ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo

install:
	bash scripts/install.sh

test: install
	$(PY) -m pytest -q

demo: install
	bash scripts/demo.sh
