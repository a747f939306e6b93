# dream-job image: the CUDA PyTorch base image's own torch + the pinned `container` extra.
#
#   make image REGISTRY=ghcr.io/you      # builds this file and pushes ghcr.io/you/dream-job:<version>
#   DOCKER_BUILDKIT=1 docker build -t <registry>/dream-job:<tag> .    # the build alone
#   docker run --gpus all -e HF_TOKEN <registry>/dream-job:<tag> run jobs/dream-s1k.yaml
#
# Behind a TLS-intercepting proxy, hand pip the CA bundle as a build secret (it is mounted for
# the pip steps only and never lands in a layer):
#   --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt
# CI builds the same file on a local Debian + CPU torch base (tests/integration/test_image.py):
#   --build-arg BASE_IMAGE=local/dream-job-test-torch:2.13.0
# See image/README.md for why this base tag.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG USER_NAME=dreamjob
ARG USER_UID=1000
# SkyPilot sets up its runtime inside the container (apt-get, sshd, FUSE mounts) with `sudo`
# when the image's user is not root, so by default the user gets passwordless sudo. Build with
# `--build-arg SKYPILOT_SUDO=0` for an image that never runs under SkyPilot.
ARG SKYPILOT_SUDO=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hf-xet (huggingface_hub 2.x's transfer backend) is in the pins; hf_transfer is not, so
# HF_HUB_ENABLE_HF_TRANSFER stays unset.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_XET_HIGH_PERFORMANCE=1

# Versions of sudo are the base distribution's; pinning them would tie the file to one base.
# hadolint ignore=DL3008
RUN if [ "${SKYPILOT_SUDO}" = 1 ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends sudo \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    # Ubuntu 24.04 bases ship a user `ubuntu` with uid 1000; ours takes the uid.
    && existing="$(getent passwd "${USER_UID}" | cut -d: -f1 || true)" \
    && if [ -n "${existing}" ]; then userdel --remove "${existing}" 2> /dev/null || true; fi \
    && useradd --no-log-init --create-home --uid "${USER_UID}" --shell /bin/bash "${USER_NAME}" \
    && if [ "${SKYPILOT_SUDO}" = 1 ]; then \
        echo "${USER_NAME} ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/${USER_NAME}" \
        && chmod 0440 "/etc/sudoers.d/${USER_NAME}"; \
    fi

WORKDIR /opt/dream-job

# Dependencies first, so a code change does not reinstall them. The base image's torch already
# satisfies every `torch` requirement in the pins, so pip does not touch it.
# PIP_BREAK_SYSTEM_PACKAGES: some bases mark their Python as externally managed (PEP 668).
COPY image/requirements.txt image/requirements.txt
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir -r image/requirements.txt

# The project itself, without dependencies (all pinned above). Job files use paths relative to
# the working directory (`jobs/assets/...`, `runs/<name>`), so the repo stays at /opt/dream-job.
COPY . .
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && chmod 0755 image/entrypoint.sh \
    && mkdir -p runs \
    && chown "${USER_NAME}:${USER_NAME}" runs \
    && dream-job --help > /dev/null

USER ${USER_NAME}

ENTRYPOINT ["/opt/dream-job/image/entrypoint.sh"]
CMD ["--help"]
