# One image for every lakeloop process: the prediction API (the default command), the webhook
# gateway, the Prefect worker and the flow runs it starts, and the Prefect and MLflow servers of
# infra/docker-compose.yml, so that clients and servers always run the versions pyproject.toml pins.
#
#   docker build -t lakeloop:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 -e LAKELOOP_MLFLOW__TRACKING_URI=... lakeloop:0.1.0
#
# Other roles override the command: `python -m gateway`, `prefect worker start ...`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the dependencies, then lakeloop installed from its own wheel ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The dependencies alone first, read from pyproject.toml (the one list of them): this slow layer
# is rebuilt only when pyproject.toml changes, not on every code change. The `kubernetes` extra
# is the worker of a Kubernetes work pool (infra/k8s/).
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["kubernetes"]))' > requirements.txt \
    && pip install -r requirements.txt

# .dockerignore keeps tests, state, caches and secrets out of this copy.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/*.whl

# ---- runtime: the virtualenv on a slim Python, no compiler, no pip cache, not root ----
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric uid lets Kubernetes check runAsNonRoot; group 0 with group-writable state
# lets platforms that pick an arbitrary uid (OpenShift) write there too.
RUN useradd --system --uid 10001 --gid 0 --home-dir /home/lakeloop --create-home \
        --shell /usr/sbin/nologin lakeloop \
    && install --directory --owner 10001 --group 0 --mode 0770 /var/lib/lakeloop \
        /var/lib/lakeloop-grafana

COPY --from=build /opt/venv /opt/venv

# Prefect deployments name their flow by file (prefect.yaml: flows/train.py) and their pull step
# changes into LAKELOOP_CODE_DIR: the worker and its flow runs need these two beside the wheel.
WORKDIR /app
COPY prefect.yaml ./
COPY flows ./flows

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LAKELOOP_CODE_DIR=/app \
    LAKELOOP_STATE_DIR=/var/lib/lakeloop \
    PREFECT_HOME=/var/lib/lakeloop/prefect \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_WAIT_POLICY=PASSIVE \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    LAKELOOP_API__HOST=0.0.0.0 \
    LAKELOOP_GATEWAY__HOST=0.0.0.0
# The settings bind loopback by default; inside a container that would make the API and the
# gateway unreachable, so the image binds all of the container's interfaces and leaves who can
# reach them to the published ports (127.0.0.1 in infra/docker-compose.yml) or the Service.

USER 10001:0
EXPOSE 8000 8002

# The default command is the API: its /healthz (liveness, not readiness: a replica waiting for its
# first champion is alive). Compose and Kubernetes give the other roles their own checks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LAKELOOP_API__PORT', '8000') + '/healthz', timeout=4)"]

CMD ["python", "-m", "api"]

# What the image was built from, last so that a new commit rebuilds one metadata layer only.
# .github/workflows/release.yml passes the commit and the release version; a local build says
# "unknown" rather than guess.
ARG VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="lakeloop" \
      org.opencontainers.image.description="lakeloop: lakeFS -> Prefect -> MLflow -> Litestar, one image for every role" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"
