# syntax=docker/dockerfile:1
# The inferstack operator (kopf). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t inferstack/operator:0.1.0 .
# Runs as UID 65532 with a read-only root filesystem (the chart sets it).

# ---- build: a wheel of the project, installed with its dependencies into a venv
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Byte-compiled here: with a read-only root filesystem Python cannot write .pyc at run time.
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/inferstack \
 && /opt/inferstack/bin/pip install /dist/*.whl \
 && /opt/inferstack/bin/python -m compileall -q /opt/inferstack/lib

# ---- runtime: the same base image (the venv's python points at it), no build tools
FROM python:3.11-slim
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
