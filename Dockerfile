# syntax=docker/dockerfile:1
# openpack-vlm API image (serve.py on uvicorn, port 8000).
#   GPU (default):  docker build -t openpack-vlm:gpu .
#   CPU:            docker build -t openpack-vlm:cpu --build-arg BASE_IMAGE=python:3.11-slim .
#   run:            docker run --gpus all --shm-size=512m -p 8000:8000 -v hf-cache:/models \
#                     -v "$PWD/runs:/adapters:ro" -e ADAPTER_PATH=/adapters/r1/adapter openpack-vlm:gpu
#   (--shm-size: decoded clips come back from the decoder processes through /dev/shm; Docker's default is 64 MB)
# The torch wheel in requirements.txt is a CUDA build that bundles its CUDA libraries and also runs on CPU, so both
# images install the same tested set; the CUDA base only adds the runtime the driver is matched against.
ARG BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (python:3.11-slim has it; the CUDA image is Ubuntu 22.04, whose archive only has an early 3.11.0
# build, so there it comes from the deadsnakes PPA) and ffmpeg.
# Package versions follow the base image's release, hence unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg ca-certificates \
    && if ! command -v python3.11 >/dev/null 2>&1; then \
         apt-get install -y --no-install-recommends software-properties-common gpg-agent \
         && add-apt-repository -y ppa:deadsnakes/ppa \
         && apt-get update \
         && apt-get install -y --no-install-recommends python3.11 python3.11-venv; \
       fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first (cached layer), then the code.
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
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
