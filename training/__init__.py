"""Training side: data loading, multi-task fine-tuning, evaluation, MLflow tracking and the
registry, ONNX export and quantization. Never imports ``serving``."""
