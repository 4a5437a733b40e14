# One image for both programs: `falachefe-operator` (the Kopf operator that
# the Helm chart runs) and `falachefe-runtime` (the workers the operator
# deploys). Build it from the repository root:
#
#   docker build -t falachefe:0.1.0 .
#   docker run --rm falachefe:0.1.0 operator --help
#   docker run --rm falachefe:0.1.0 runtime worker --pool auth
#
# The chart and the operator's worker Deployments set the container command
# (`falachefe-operator`, `falachefe-runtime worker --pool ...`) directly; the
# entrypoint below is for people running the image by hand.
#
# tests/image runs this file's builder steps in a fresh virtualenv, so keep
# its RUN lines free of absolute paths: they use $VIRTUAL_ENV and WORKDIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# -- builder: the virtualenv, from the runtime lock, plus the project's wheel --
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled at build time: the final image runs with a read-only root
# filesystem and PYTHONDONTWRITEBYTECODE, so nothing could cache it later.
# The uv cache is a mount on another filesystem: copy instead of hardlinking.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/falachefe
WORKDIR /src
RUN uv venv --python python3.11 "$VIRTUAL_ENV"
# requirements-runtime.lock is requirements.lock without the dev extra: no
# test, lint or type-checking tools in the image.
COPY requirements-runtime.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip sync --strict requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir dist . \
    && uv pip install --no-deps dist/*.whl

# -- final: the interpreter, the virtualenv and nothing to build with ---------
FROM ${PYTHON_IMAGE}
# The global ARG again, so the base.name label names the base really used.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="falachefe" \
      org.opencontainers.image.description="Falachefe Kubernetes operator and worker runtime (WhatsApp auth and CrewAI crews on BullMQ queues)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# The base image's pip, setuptools and wheel (python:*-slim has them, a
# Debian python3 has none) are build tools the programs never use; uv is
# left behind in the builder.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel; \
    fi \
    && groupadd --system --gid 10001 falachefe \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin falachefe
COPY --from=builder /opt/falachefe /opt/falachefe
# HOME and CrewAI's storage point at /tmp, the only writable place (an
# emptyDir) under a read-only root filesystem.
ENV PATH=/opt/falachefe/bin:$PATH \
    VIRTUAL_ENV=/opt/falachefe \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CREWAI_STORAGE_DIR=/tmp/crewai \
    CREWAI_DISABLE_TELEMETRY=true \
    OTEL_SDK_DISABLED=true
USER 10001:10001
WORKDIR /tmp
# 8080: health (operator and workers); 9090: operator metrics; 9102: worker metrics.
EXPOSE 8080 9090 9102
# `falachefe operator ARGS...` or `falachefe runtime ARGS...`; the program's
# own name works too. exec: the program is PID 1 and gets SIGTERM itself.
ENTRYPOINT ["/bin/sh", "-c", "case \"${1:-}\" in operator|runtime) program=\"falachefe-$1\"; shift; exec \"$program\" \"$@\" ;; falachefe-operator|falachefe-runtime) exec \"$@\" ;; *) echo 'usage: falachefe operator [ARGS...] | falachefe runtime [ARGS...]' >&2; exit 64 ;; esac", "falachefe"]
CMD ["operator"]
