# syntax=docker/dockerfile:1.7
#
# migration-runner image: ENTRYPOINT is the runner, default command `upgrade`.
#
#   docker build -t migration-runner .
#   docker run --rm -e MIGRATION_DATABASE_URL=... -v "$PWD:/app:ro" migration-runner
#
# Extend it with your Alembic project (see deploy/Dockerfile.example-app and docs/deploy.md):
#
#   FROM ghcr.io/OWNER/migration-runner:0.1.0
#   COPY alembic.ini /app/
#   COPY migrations/ /app/migrations/
#
# Build arguments:
#   PYTHON_IMAGE  the slim Python 3.11 base for both stages (tests pass a local image built
#                 with debootstrap; the two stages must use the same base because the venv's
#                 interpreter is the base image's python3).
# Build secret (optional):
#   pip_ca        a CA bundle pip should trust (a TLS-inspecting proxy). Mounted only while pip
#                 runs, never stored in a layer:  --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a venv with the locked dependencies and the runner's own wheel ---------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_INPUT=1

RUN python3 -m venv /opt/migration-runner

# Dependencies first (their layer is reused until the lock changes), exactly as locked.
COPY requirements.lock /src/requirements.lock
RUN --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/migration-runner/bin/pip install --no-cache-dir --no-deps --require-hashes \
        -r /src/requirements.lock

# The runner itself: build its wheel, install it without touching the locked dependencies.
COPY pyproject.toml README.md /src/
COPY runner /src/runner
RUN --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/migration-runner/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels /src; \
    /opt/migration-runner/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl; \
    /opt/migration-runner/bin/pip check; \
    /opt/migration-runner/bin/python -m pip uninstall --yes pip setuptools; \
    rm -rf /opt/migration-runner/lib/python3.*/site-packages/kubernetes/aio

# About `kubernetes/aio`: the kubernetes client ships a second, asyncio copy of its generated
# API (~70 MB). The runner uses only the synchronous client (runner/kube.py) and nothing in
# `kubernetes.client` or `kubernetes.config` imports `kubernetes.aio`, so the image drops it
# (tests/test_image.py imports the client inside the image to prove it still works).

# --- runtime: the base image plus the venv, nothing else ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The title is the distribution's name (what `pip show` and PyPI call it); the command inside
# is `migration-runner`. tests/test_readme.py keeps this label equal to pyproject.toml's name.
LABEL org.opencontainers.image.title="alembic-migration-runner" \
      org.opencontainers.image.description="Apply Alembic migrations safely at deploy time (command: migration-runner)" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/migration-runner /opt/migration-runner

# HOME=/tmp: the root filesystem may be read-only; /tmp is the one writable place (emptyDir or
# tmpfs). Byte code is precompiled at install time, so nothing needs to write .pyc files.
ENV PATH=/opt/migration-runner/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# Put alembic.ini and migrations/ here (COPY in a derived image, or a read-only mount): the
# runner's default MIGRATION_CONFIG is ./alembic.ini.
WORKDIR /app

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# The runner is PID 1: it installs its own SIGTERM/SIGINT handlers (rolls back the current
# revision, releases the lock) and exits 143/130, so no init wrapper sits in between.
STOPSIGNAL SIGTERM
ENTRYPOINT ["migration-runner"]
CMD ["upgrade"]
