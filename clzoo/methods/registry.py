"""Method registry: built-ins register with ``@register_method("name")``; installed packages add methods through
the ``clzoo.methods`` entry-point group (``name = "package.module:Class"``).

The Hydra configs (``conf/method/<name>.yaml``, ``_target_`` = the class) are what the command line uses; the
test suite checks that every registered name has a config whose ``_target_`` and defaults match its class,
so the two cannot drift apart.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

_REGISTRY: dict[str, type] = {}
_BUILTINS_LOADED = False
ENTRY_POINT_GROUP = "clzoo.methods"


def register_method(name: str):
    """Class decorator: make a :class:`~clzoo.methods.base.Method` subclass available as ``name``."""

    def wrap(cls):
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name '{name}' is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.method_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import clzoo.methods as pkg

    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)


def _plugin_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> list[str]:
    """Names of every built-in and installed method."""
    _load_builtins()
    return sorted(set(_REGISTRY) | set(_plugin_entry_points()))


def get_method_class(name: str) -> type:
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _plugin_entry_points()
    if name in eps:
        cls = eps[name].load()
        _REGISTRY.setdefault(name, cls)
        if not getattr(cls, "method_name", ""):
            cls.method_name = name
        return cls
    raise KeyError(f"unknown method '{name}'; available: {', '.join(available_methods())}")


def make_method(name: str, model, ctx, **hparams):
    """Build method ``name`` around ``model`` for the run context ``ctx`` (the Python API of ``method=name``)."""
    return get_method_class(name)(model, ctx, **hparams)
