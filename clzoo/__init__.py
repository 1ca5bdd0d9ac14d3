"""clzoo: a continual-learning benchmark and method zoo with memory counted in bytes."""
__version__ = "0.1.0"

from .memory import Budget, ReplayBuffer, tag_memory  # noqa: E402
from .methods import Method, RunContext, StreamInfo, available_methods, make_method, register_method  # noqa: E402

__all__ = ["__version__", "Budget", "ReplayBuffer", "tag_memory", "Method", "RunContext", "StreamInfo",
           "available_methods", "make_method", "register_method"]
