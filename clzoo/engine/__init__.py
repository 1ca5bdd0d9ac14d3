"""Engine: the task loop, evaluation, metrics, checkpoints and reports."""
from .runner import build_model, build_stream_from_config, evaluate, run

__all__ = ["build_model", "build_stream_from_config", "evaluate", "run"]
