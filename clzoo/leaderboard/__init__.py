"""Leaderboards from experiment suites.

A *suite* (``experiments/<name>.yaml``, schema in :mod:`clzoo.leaderboard.suite`) names a stream, shared
settings and cells (method x budget); every cell runs once per seed into a fixed folder
``<runs>/<suite>/<cell-id>/seed<k>/``. ``clzoo-leaderboard run`` fills the missing runs (Hydra multirun with any
launcher), ``build`` turns the runs into ``leaderboard/`` (README tables, results.csv, plots, index.html) and
``check`` re-runs committed cells and compares them within a two-sided tolerance.
"""
from .suite import Cell, Suite, SuiteError, load_suite

__all__ = ["Cell", "Suite", "SuiteError", "load_suite"]
