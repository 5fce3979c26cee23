# syntax=docker/dockerfile:1
# The inferstack router (OpenAI-compatible data plane). Build from the repository root:
#   docker build -f images/router.Dockerfile -t inferstack/router:0.1.0 .
# Runs as UID 65532 with a read-only root filesystem (the chart sets it).

# BASE is a Python 3.11 with nothing else; BUILD_BASE the same Python with venv. python:3.11-slim
# is both; `make images` builds both from Debian's packages (images/build.py), no registry needed.
ARG BASE=python:3.11-slim
ARG BUILD_BASE=python:3.11-slim

# ---- build: a wheel of the project, installed with its dependencies into a venv
FROM ${BUILD_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Byte-compiled here: with a read-only root filesystem Python cannot write .pyc at run time.
# pip and setuptools leave the venv once it is filled: the final image has no installer.
RUN python3 -m venv /opt/inferstack \
 && /opt/inferstack/bin/pip wheel --no-deps --wheel-dir /dist . \
 && /opt/inferstack/bin/pip install /dist/*.whl \
 && /opt/inferstack/bin/pip uninstall -y pip setuptools \
 && /opt/inferstack/bin/python -m compileall -q /opt/inferstack/lib

# ---- runtime: the same base image (the venv's python points at it), no build tools
FROM ${BASE}
LABEL org.opencontainers.image.title="inferstack-router" \
      org.opencontainers.image.description="OpenAI-compatible router applying inferstack traffic plans" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/inferstack /opt/inferstack
ENV PATH=/opt/inferstack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# 65532 is the conventional "nonroot" UID; no passwd entry is needed.
USER 65532:65532
# OpenAI API, /healthz, /readyz and /metrics.
EXPOSE 8080
ENTRYPOINT ["inferstack-router"]
