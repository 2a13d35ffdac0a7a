# syntax=docker/dockerfile:1
# kubeinfer-server on NVIDIA GPUs: CUDA 12 and cuDNN 9 runtime libraries from
# the base image, onnxruntime-gpu (CUDA provider, CPU fallback; the TensorRT provider
# needs TensorRT libraries, which this base does not ship),
# plus the s3 extra for the model-fetch init container. The host needs an
# NVIDIA driver for CUDA 12.8 or later.
# Build from the repository root:
#   docker build -f images/server-gpu.Dockerfile -t kubeinfer/server-gpu:0.1.0 .

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/kubeinfer
WORKDIR /src
COPY images/constraints.txt images/constraints.txt
COPY pyproject.toml README.md ./
COPY server server
COPY operator operator
RUN /opt/kubeinfer/bin/pip install --constraint images/constraints.txt ".[gpu,s3]"

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/kubeinfer /opt/kubeinfer
ENV PATH=/opt/kubeinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8001 8002
ENTRYPOINT ["kubeinfer-server"]
CMD ["serve", "--providers", "cuda,cpu"]
