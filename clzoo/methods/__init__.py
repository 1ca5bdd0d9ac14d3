"""Methods, one file each, grouped by family: baselines, regularization, replay, reprogramming."""
from .base import Method, NonFiniteLossError, RunContext, StreamInfo, build_optimizer
from .registry import available_methods, get_method_class, make_method, register_method

__all__ = ["Method", "NonFiniteLossError", "RunContext", "StreamInfo", "build_optimizer", "available_methods",
           "get_method_class", "make_method", "register_method"]
