# syntax=docker/dockerfile:1.7
#
# Two images from one file:
#   docker build --target worker  -t segmenter-worker:0.1.0  .   # NumPy serving, no TensorFlow
#   docker build --target retrain -t segmenter-retrain:0.1.0 .   # adds .[train] (TensorFlow)
#
# The builder turns the project into a wheel and fills a wheelhouse with every
# dependency; the final stages install from that wheelhouse only (--no-index),
# so what runs is exactly what the builder resolved. Drop a constraints.txt
# (`pip freeze` of a tested environment, without the project itself) next to
# this file to pin every transitive dependency; the builder uses it if present.

ARG SEGMENTER_VERSION=0.1.0

# ---------------------------------------------------------------- builder
FROM python:3.11.11-slim-bookworm AS builder
ARG SEGMENTER_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m pip install "pip==24.3.1"
WORKDIR /src
# constraints.tx[t]: optional file; the glob matches nothing when it is absent.
COPY pyproject.toml README.md constraints.tx[t] ./
COPY stream ./stream
COPY model ./model
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
    && test -f "/dist/segmenter-${SEGMENTER_VERSION}-py3-none-any.whl" \
    && if [ -f constraints.txt ]; then echo "-c /src/constraints.txt" > /tmp/pins; else : > /tmp/pins; fi \
    && python -m pip wheel --wheel-dir /wheels/worker $(cat /tmp/pins) \
        "segmenter @ file:///dist/segmenter-${SEGMENTER_VERSION}-py3-none-any.whl"

# Only built when the retrain target is: TensorFlow wheels never reach the worker.
FROM builder AS builder-train
ARG SEGMENTER_VERSION
RUN python -m pip wheel --wheel-dir /wheels/train $(cat /tmp/pins) \
        "segmenter[train] @ file:///dist/segmenter-${SEGMENTER_VERSION}-py3-none-any.whl"

# ---------------------------------------------------------------- runtime base
FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/segmenter \
    PATH=/opt/segmenter/bin:$PATH \
    SEGMENTER_METRICS_HOST=0.0.0.0 \
    SEGMENTER_METRICS_PORT=9108 \
    SEGMENTER_MODEL_DIR=/var/lib/segmenter/models \
    SEGMENTER_DATA_DIR=/var/lib/segmenter/faust
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a number,
# and volumes can be chowned to it (fsGroup 10001).
RUN groupadd --system --gid 10001 segmenter \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/segmenter --create-home \
        --shell /usr/sbin/nologin segmenter \
    && install -d -o 10001 -g 10001 -m 0750 \
        /var/lib/segmenter /var/lib/segmenter/models /var/lib/segmenter/faust \
    && python -m venv "$VIRTUAL_ENV"
WORKDIR /var/lib/segmenter
EXPOSE 9108
ENTRYPOINT ["segmenter"]

# ---------------------------------------------------------------- worker
FROM runtime AS worker
ARG SEGMENTER_VERSION
RUN --mount=type=bind,from=builder,source=/wheels/worker,target=/wheels \
    python -m pip install --no-index --find-links /wheels "segmenter==${SEGMENTER_VERSION}" \
    && ! python -m pip show --quiet tensorflow tensorflow-cpu 2>/dev/null
USER 10001:10001
# Seed the model registry with the bundled bootstrap model, so an empty named
# volume mounted here starts with it (Docker copies image content into a new
# volume) and several replicas never race to seed it.
RUN python -c "from pathlib import Path; from model.registry import ensure_serving_model; \
print(ensure_serving_model(Path('/var/lib/segmenter/models')))"
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["worker"]

# ---------------------------------------------------------------- retrain
FROM runtime AS retrain
ARG SEGMENTER_VERSION
RUN --mount=type=bind,from=builder-train,source=/wheels/train,target=/wheels \
    python -m pip install --no-index --find-links /wheels "segmenter[train]==${SEGMENTER_VERSION}"
ENV MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
RUN python -c "from pathlib import Path; from model.registry import ensure_serving_model; \
print(ensure_serving_model(Path('/var/lib/segmenter/models')))"
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["retrain", "--every", "24h"]
