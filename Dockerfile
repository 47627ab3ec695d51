# TARPO on NVIDIA GPUs: `docker build -t tarpo .` then
#   docker run --gpus all -v "$PWD/models:/app/models" tarpo train --model qwen2.5-7b
#
# CUDA 13.0 because the pinned torch==2.13.0 wheel from PyPI is the cu130 build (torch.version.cuda
# == "13.0"). The wheel ships its own CUDA libraries (nvidia-*-cu13 packages), so the small `base`
# flavour suffices; the host needs a driver that supports CUDA 13.0.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/app/.cache/huggingface

# Ubuntu's python3 is 3.12 (torch 2.13 ships cp312 wheels); git lets runs record their commit and
# lets DVC work on a mounted checkout. Distribution packages are left unpinned on purpose: the
# archive drops old versions, so pins would break rebuilds; the Python stack is pinned instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# Requirements first: the heavy layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Non-root; uid 1000 is taken by the image's `ubuntu` user. USER is numeric so that Kubernetes'
# runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 tarpo \
    && useradd --create-home --uid 10001 --gid 10001 --shell /bin/bash tarpo \
    && mkdir -p /app \
    && chown 10001:10001 /app
WORKDIR /app
COPY --chown=10001:10001 . .
USER 10001:10001

ENTRYPOINT ["python", "cli.py"]
CMD ["--help"]
