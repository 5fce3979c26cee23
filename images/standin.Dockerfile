# syntax=docker/dockerfile:1
# The vLLM stand-in: a small deterministic OpenAI-compatible server that exports
# vLLM's metric names. For clusters without GPUs (kind): set a stack's
# spec.model.image to this image and spec.model.gpus to 0. Build from the repository root:
#   docker build -f images/standin.Dockerfile -t inferstack/standin:0.1.0 .

# BASE is a Python 3.11 with nothing else; BUILD_BASE the same Python with venv. python:3.11-slim
# is both; `make images` builds both from Debian's packages (images/build.py), no registry needed.
ARG BASE=python:3.11-slim
ARG BUILD_BASE=python:3.11-slim

FROM ${BUILD_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY images/standin-entrypoint.py /opt/inferstack/standin-entrypoint.py
# pip and setuptools leave the venv once it is filled: the final image has no installer.
RUN python3 -m venv /opt/inferstack \
 && /opt/inferstack/bin/pip wheel --no-deps --wheel-dir /dist . \
 && /opt/inferstack/bin/pip install /dist/*.whl \
 && /opt/inferstack/bin/pip uninstall -y pip setuptools \
 && /opt/inferstack/bin/python -m compileall -q /opt/inferstack/lib /opt/inferstack/standin-entrypoint.py

FROM ${BASE}
LABEL org.opencontainers.image.title="inferstack-standin" \
      org.opencontainers.image.description="Deterministic vLLM stand-in for inferstack tests and GPU-less clusters" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/inferstack /opt/inferstack
ENV PATH=/opt/inferstack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# vLLM's port: the operator's modelPort (8000) is passed as --port.
EXPOSE 8000
# Takes vLLM's flags (what the operator passes) and keeps the ones the stand-in knows.
ENTRYPOINT ["python", "/opt/inferstack/standin-entrypoint.py"]
