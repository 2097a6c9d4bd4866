#!/usr/bin/env bash
# Build .gpucarry/site.tar.xz: this repo's pins that the device machine's image lacks or holds in other versions, for
# CPython 3.12 on x86_64, unpacked there onto PYTHONPATH by scripts/gpu_checks.sh (no network on that machine).
#
#     bash scripts/gpu_carry.sh          # ~14 MB; then run gpu_checks.sh there with carry [".gpucarry"]
#
# The working tree that travels is capped at 64 MiB, so bitsandbytes keeps only its CUDA 13 and CPU libraries (the
# image's torch is built for CUDA 13) and everything is xz-compressed.
set -eu
cd "$(dirname "$0")/.."
grep -qx "/.gpucarry/" .git/info/exclude 2>/dev/null || echo "/.gpucarry/" >> .git/info/exclude
site=$(mktemp -d)
python -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --target "$site" \
  bitsandbytes==0.50.2 transformers==5.24.0 peft==0.21.2 webdataset==1.0.2 braceexpand pydantic==2.13.4 \
  pydantic-core==2.46.4 pydantic-settings==2.16.3 python-dotenv annotated-types typing-inspection omegaconf==2.4.0 \
  antlr4-python3-runtime openpack-toolkit==1.1.0 pytz
find "$site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*cpu*' -delete
find "$site" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p .gpucarry
tar -C "$site" -cJf .gpucarry/site.tar.xz .
rm -rf "$site"
ls -la .gpucarry/site.tar.xz
