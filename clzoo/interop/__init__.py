"""Bridges to other continual-learning libraries. Each module imports its library lazily (only when used), so
``clzoo-run`` does not pay for a library it does not use.

* :mod:`clzoo.interop.avalanche`: Avalanche benchmarks as clzoo streams (``stream=avalanche``).
"""
