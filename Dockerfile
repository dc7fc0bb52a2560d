# syntax=docker/dockerfile:1
# One image for every xsell process; the Kubernetes manifests pick the module to run:
#   python -m services.<segments|campaigns|channels|attribution>, python -m gateway,
#   python -m services.migrate <service> (init containers).
# Build: docker build -t xsell:dev .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# The runtime dependencies, in the venv that the final image copies as a whole.
COPY requirements.txt .
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt

# The stub generators live in a throw-away venv of their own, with the versions requirements-dev.txt names,
# so none of the dev tooling reaches the final image.
COPY requirements-dev.txt .
RUN grep -E '^(grpcio-tools|mypy-protobuf)\b' requirements-dev.txt > codegen.txt \
    && python -m venv /opt/codegen && /opt/codegen/bin/pip install -r codegen.txt
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/
RUN /opt/codegen/bin/python scripts/gen_protos.py

FROM ${PYTHON_IMAGE}
# Fixed ids, so the manifests can say runAsUser/fsGroup 10001 and runAsNonRoot can check them.
RUN groupadd --system --gid 10001 xsell && useradd --system --uid 10001 --gid 10001 --no-create-home xsell
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /src/gen /app/gen
COPY plumbing/ /app/plumbing/
COPY services/ /app/services/
COPY gateway/ /app/gateway/
# Bytecode compiled at build time: the root filesystem is read-only at run time.
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 50051 8080 50061 50062 50063 50064
CMD ["python", "-m", "gateway"]
