# syntax=docker/dockerfile:1
# openpack-vlm API image (serve.py on uvicorn, port 8000). One Dockerfile, two torch builds:
#   GPU (default):  docker build -t openpack-vlm:gpu .
#                   torch from PyTorch's CUDA 12.6 index: needs an NVIDIA driver >= 525.60.13 on the host (CUDA 12.x
#                   minor-version compatibility) and the NVIDIA Container Toolkit; T4, A100, H100 all work.
#                   Another flavour: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (driver
#                   >= 525 too) or .../cu130 (driver >= 580).
#   CPU:            docker build -t openpack-vlm:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#                   (no CUDA libraries in the image)
#   run:            docker run --gpus all --shm-size=512m -p 8000:8000 -v hf-cache:/models \
#                     -v "$PWD/runs:/adapters:ro" -e ADAPTER_PATH=/adapters/r1/adapter openpack-vlm:gpu
#   (--shm-size: decoded clips come back from the decoder processes through /dev/shm; Docker's default is 64 MB)
# The torch wheels carry their own CUDA user-space libraries and the container toolkit mounts the host's driver, so
# the base is plain Python for both images. Only serve.py's dependencies are installed (requirements-serve.txt):
# no notebook, test or lint tools.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# PyTorch's wheel index for the torch build (see above); PyPI stays the index for everything else
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (python:3.11-slim has it; an Ubuntu 22.04 base given as BASE_IMAGE gets it from the deadsnakes PPA,
# its archive only has an early 3.11.0 build). No ffmpeg: decoding uses the libav that the PyAV and decord wheels
# bundle. Package versions follow the base image's release, hence unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && if ! command -v python3.11 >/dev/null 2>&1; then \
         apt-get install -y --no-install-recommends software-properties-common gpg-agent \
         && add-apt-repository -y ppa:deadsnakes/ppa \
         && apt-get update \
         && apt-get install -y --no-install-recommends python3.11 python3.11-venv; \
       fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app

# Dependencies first (cached layers), then the code: torch from its index, then what serving imports.
COPY requirements-torch.txt requirements-serve.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -r requirements-torch.txt \
    && pip install --no-cache-dir -r requirements-serve.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY pyproject.toml serve.py ./
COPY openpack_vlm ./openpack_vlm
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /models /adapters \
    && chown app:app /models /adapters

# Model cache (hub downloads + the tiny test model) and LoRA adapters live in volumes, not in the image.
ENV HF_HOME=/models/hf \
    OPENPACK_VLM_CACHE=/models/openpack-vlm \
    MODEL_ID=Qwen/Qwen2-VL-2B-Instruct \
    QUANTIZATION=auto \
    HOST=0.0.0.0 \
    PORT=8000
VOLUME ["/models", "/adapters"]

USER 10001:10001
EXPOSE 8000
# The model loads after start (2B: minutes on first download), so /health, not /ready, is the liveness probe.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "serve.py", "--healthcheck"]
CMD ["python", "serve.py"]
