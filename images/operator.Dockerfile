# syntax=docker/dockerfile:1
# kubeinfer-operator: the kopf operator (charts/kubeinfer runs it).
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t kubeinfer/operator:0.1.0 .

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kubeinfer
WORKDIR /src
COPY images/constraints.txt images/constraints.txt
COPY pyproject.toml README.md ./
COPY server server
COPY operator operator
RUN /opt/kubeinfer/bin/pip install --constraint images/constraints.txt ".[operator]"

FROM python:3.11.13-slim-bookworm
COPY --from=build /opt/kubeinfer /opt/kubeinfer
ENV PATH=/opt/kubeinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["kubeinfer-operator"]
