# TARPO on NVIDIA GPUs. The image is the environment; your clone, mounted at /workspace, is the working
# directory, so data, checkpoints, metrics, mlflow.db and dvc.lock land on the host, owned by you:
#
#   docker build -t tarpo .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/workspace" tarpo dvc repro
#   docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" -v "$PWD:/workspace" tarpo \
#       dvc exp run -S model.preset=qwen2.5-7b -S train.num_processes=8 \
#                   -S train.accelerate_config=configs/accelerate/multi_gpu.yaml
#
# (README, "Scaling" > "Docker".) Without a mount the image still runs from the copy baked in below (DVC is
# configured there without git, `core.no_scm`); its outputs then vanish with the container.
#
# CUDA 13.0 because the pinned torch==2.13.0 wheel from PyPI is the cu130 build (torch.version.cuda
# == "13.0"). The wheel ships its own CUDA libraries (nvidia-*-cu13 packages), so the small `base`
# flavour suffices; the host needs a driver that supports CUDA 13.0.
# BASE_IMAGE: any Debian or Ubuntu image whose python3 is one torch 2.13 has wheels for (3.10-3.13):
# scripts/docker_build_and_run.sh builds on a Debian bookworm base made locally (Python 3.11), for
# machines that cannot pull from a registry.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
FROM ${BASE_IMAGE}

# HOME is a world-writable place: `--user $(id -u):$(id -g)` runs as a uid the image has no account for,
# and git, DVC, MLflow and matplotlib write config/cache files under HOME.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp/home \
    HF_HOME=/workspace/models/.hf-cache

# python3 is the base's (Ubuntu 24.04: 3.12, Debian bookworm: 3.11); git lets DVC work on the mounted clone and
# runs record their commit. Distribution packages are left unpinned on purpose: the archive drops old
# versions, so pins would break rebuilds; the Python stack is pinned instead.
# `safe.directory '*'`: git refuses a repository owned by another uid (the mount, when run without --user).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && git config --system --add safe.directory '*' \
    && mkdir -p /tmp/home && chmod 1777 /tmp/home

# Requirements first: the heavy layer is rebuilt only when requirements.txt changes.
# PIP_FIND_LINKS / PIP_INDEX_URL / PIP_CERT: empty by default (PyPI, so GPU users get the CUDA torch). pip
# reads them from the environment, so a build can point pip at a local wheel directory (mounted into the
# build; scripts/docker_build_and_run.sh uses it for the CPU torch wheel), a mirror, or the CA bundle of a
# TLS-intercepting proxy. Build-time only: not in the image's ENV.
ARG PIP_FIND_LINKS=""
ARG PIP_INDEX_URL=""
ARG PIP_CERT=""
# A compiler only for this layer: pycosat (reasoning-gym's SAT solver) is published as a source archive only,
# and neither base has gcc. Purged in the same RUN, so the image does not carry it.
COPY requirements.txt /tmp/requirements.txt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
    && pip install -r /tmp/requirements.txt \
    && apt-get purge -y --auto-remove gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/* /tmp/requirements.txt

# The baked-in copy: used only when nothing is mounted on /workspace. `.git` is not in the build context
# (.dockerignore), so DVC runs there without git; a mounted clone brings its own .git and .dvc/ (the mount
# hides this copy, config.local included). World-writable so that any --user can run it.
WORKDIR /workspace
COPY . .
RUN dvc config --local core.no_scm true \
    && chmod -R a+rwX /workspace

# Non-root by default; `--user $(id -u):$(id -g)` overrides it so that files on the mount are yours.
# Numeric so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

CMD ["python", "cli.py", "--help"]
