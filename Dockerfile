# The serving image: ONNX Runtime + tokenizers + FastAPI, the shipped bundle inside, no torch.
# Build: docker build -t caretriage .   Run: docker run -e CARETRIAGE_API_KEYS=<key> -p 8000:8000 caretriage
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md caretriage_cli.py ./
COPY features ./features
COPY serving ./serving
# The base install only (no [train] extra): torch and transformers never enter the image.
RUN pip install --no-cache-dir --prefix=/install ".[postgres]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 caretriage
COPY --from=build /install /usr/local
WORKDIR /app
COPY --chown=caretriage:caretriage models/caretriage-minilm /app/models/caretriage-minilm
USER caretriage
ENV CARETRIAGE_MODEL_DIR=/app/models/caretriage-minilm \
    CARETRIAGE_DATABASE_URL=sqlite:////home/caretriage/caretriage.db \
    CARETRIAGE_HOST=0.0.0.0 \
    CARETRIAGE_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# /readyz at CARETRIAGE_PORT, whatever port the container is given.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 CMD ["caretriage", "health"]
CMD ["caretriage", "serve"]
