"""nanoko-harness: ablation sweeps for small character-level language models, tracked in MLflow."""

__version__ = "0.1.0"
