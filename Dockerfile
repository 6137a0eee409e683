# syntax=docker/dockerfile:1
# colqwen-search: the API (`colqwen serve`), the worker (`colqwen worker`) and the CLI.
# Installs from uv.lock exactly as CI does (`uv sync --frozen`), without the dev group.
# The registry's torch wheels carry CUDA: the same image runs on GPU hosts (NVIDIA container
# toolkit) and on CPU-only hosts.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN pip install --no-cache-dir uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY retrieval ./retrieval
COPY indexer ./indexer
COPY app ./app
RUN uv sync --frozen --no-dev

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# OCR of pages without text (Tesseract, English; add tesseract-ocr-<lang> for others) and office
# formats converted to PDF (LibreOffice, headless: no GUI packages).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        tesseract-ocr tesseract-ocr-eng \
        libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 colqwen \
    && mkdir -p /data /models \
    && chown colqwen:colqwen /data /models
COPY --from=build --chown=colqwen:colqwen /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    TORCHINDUCTOR_CACHE_DIR=/models/torchinductor \
    COLQWEN_COMPILE_CACHE=/models/compile-cache \
    COLQWEN_DATA_DIR=/data
WORKDIR /app
USER colqwen
VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["colqwen"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
