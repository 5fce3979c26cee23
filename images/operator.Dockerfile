# syntax=docker/dockerfile:1
# The inferstack operator (kopf). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t inferstack/operator:0.1.0 .
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
LABEL org.opencontainers.image.title="inferstack-operator" \
      org.opencontainers.image.description="Kubernetes operator for LLM inference stacks" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/inferstack /opt/inferstack
ENV PATH=/opt/inferstack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# 65532 is the conventional "nonroot" UID; no passwd entry is needed.
USER 65532:65532
# Prometheus metrics (--metrics-port).
EXPOSE 8080
ENTRYPOINT ["inferstack-operator"]
