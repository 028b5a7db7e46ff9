# syntax=docker/dockerfile:1
# One image for the messaging service (`messaging serve`, the default), its migrations
# (`messaging migrate`, run by the operator's Job) and the operator (`messaging operator`).
#
#   docker build -t messaging:dev .
#
# tests/chart/test_image.py builds a virtualenv from the same build context with the same RUN
# commands as the builder stage below and runs those commands from it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv with the project and its pinned dependencies --------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/messaging
COPY pyproject.toml constraints.txt README.md ./
COPY service/ service/
COPY operator/ operator/
# A regular (non-editable) install: the final stage has the venv and nothing of /src.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/messaging/bin/pip install -c constraints.txt .

# --- final: the slim base, the virtualenv, a non-root numeric user --------------------------------
FROM ${PYTHON_IMAGE}
# A numeric USER, so Kubernetes can verify runAsNonRoot; the same uid as the chart's
# podSecurityContext. The working directory is where `messaging serve` puts its SQLite file when
# no database is configured (in Kubernetes the root filesystem is read-only and it is PostgreSQL).
RUN groupadd --system --gid 10001 messaging \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin messaging \
 && install -d -o 10001 -g 10001 /var/lib/messaging
COPY --from=builder /opt/messaging /opt/messaging
ENV PATH=/opt/messaging/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MESSAGING_HTTP_HOST=0.0.0.0 \
    MESSAGING_GRPC_HOST=0.0.0.0
WORKDIR /var/lib/messaging
USER 10001:10001
# HTTP + Socket.IO, /metrics (its own port, kept off the public Service), and gRPC.
# (The operator serves its metrics on 8080, liveness on 8081.)
EXPOSE 8000 9090 50051
ENTRYPOINT ["messaging"]
CMD ["serve"]
