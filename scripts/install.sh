#!/usr/bin/env bash
# Installs everything the repo needs on a fresh machine (Python 3.11, x86_64), from the repo's own files.
#   bash scripts/install.sh
# GPU machines get the CUDA build of torch from requirements.txt; it also runs on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || echo "install.sh: apt could not install ffmpeg (optional: decoding uses the libav bundled with PyAV and decord)"
  else
    echo "install.sh: no ffmpeg on PATH (optional: decoding uses the libav bundled with PyAV and decord)"
  fi
fi
# Debian's Chromium + ChromeDriver for the browser test of the web page (tests/test_browser.py; nothing downloaded
# by a test tool). Without root/apt the test fails and says what to install.
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "install.sh: apt could not install chromium chromium-driver (needed by tests/test_browser.py)"
  else
    echo "install.sh: no chromium/chromedriver on PATH: install Debian's chromium chromium-driver for tests/test_browser.py"
  fi
fi
$PY -m pip install -q --disable-pip-version-check -r requirements.txt
# openpack-toolkit pins numpy<2 / pandas<2 but runs on the versions above (tested): install it without its pins.
$PY -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
# gradio for the Space app and its test, without its pillow<13 cap (requirements-gradio.txt says why)
$PY -m pip install -q --disable-pip-version-check --no-deps -r requirements-gradio.txt
$PY -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "install.sh: done ($($PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
