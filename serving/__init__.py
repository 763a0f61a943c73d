"""The scoring service: FastAPI app, ONNX Runtime inference, priority, routing and the store.
Never imports torch, transformers or ``training``."""
