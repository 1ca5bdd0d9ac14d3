"""Experiment suites: the YAML files in ``experiments/`` that define one leaderboard table each.

Schema (every key but ``stream``, ``seeds`` and ``cells`` is optional)::

    title: Seq-MNIST (DER paper protocol)      # heading of the table (default: the file name)
    description: ...                            # text shown above the table
    stream: split_mnist                         # a config of clzoo/conf/stream
    preset: seq_mnist                           # an experiment preset (conf/experiment/) applied to every cell
    common: [trainer.batch_size=10, ...]        # clzoo-run overrides applied to every cell
    seeds: [0, 1, 2]                            # training seeds; every cell runs once per seed
    settings: [class_il, task_il]               # accuracy columns: class_il, task_il, domain_il
    reference_source: "Buzzega et al. ..."      # where the published numbers come from (cells may override)
    cells:
      - method: der                             # a config of clzoo/conf/method (optional with a preset)
        preset: der_seq_mnist                   # this cell's experiment preset (+experiment=der_seq_mnist):
                                                #   it holds the protocol and the method's arguments
        name: der                               # optional cell name (default: the method); [A-Za-z0-9_.+]
        overrides: [method.minibatch_size=128]  # clzoo-run overrides of this cell
        buffers: [200, 500, 5120]               # sample budgets: method.buffer.capacity=N -> cells der-b200, ...
        equal_bytes: [200, 500, 5120]           # byte budgets: budget.mb = the bytes ER's reservoir buffer of N
                                                #   samples takes on this stream (the buffer sizes itself from the
                                                #   budget) -> cells der-bytes200, ...
        budgets_mb: [0.5]                       # byte budgets given in MB (2^20 bytes) -> cell der-mb0.5
        per_buffer:                             # extra overrides for budget N (of buffers and equal_bytes)
          200: [trainer.optimizer.lr=0.03, method.alpha=0.2]
        reference:                              # published final accuracies (%) of the sample cells, by N
          200: {class_il: 84.55, task_il: 98.80}
        source: "..."                           # overrides reference_source for this cell
        note: "..."                             # a remark printed under the table

A cell without any budget runs once per seed with the method's defaults (``reference`` is then a flat
``{class_il: 19.6, task_il: 94.94}``). Cell ids are ``<name>``, ``<name>-b<N>``, ``<name>-bytes<N>`` and
``<name>-mb<X>``; a run's folder is ``<runs>/<suite>/<cell-id>/seed<k>/``.

The overrides of one run are, in this order: ``stream=<stream> method=<method>``, ``+experiment=<preset>`` (the
cell's preset, else the suite's), ``common``, the cell's
``overrides``, the budget (``method.buffer.capacity=N`` or ``budget.mb=X``), ``per_buffer[N]``, ``seed=<k>``.
Where data live, the device, CPU threads and logging are execution settings (``clzoo-leaderboard run`` options):
they are not part of a suite and not part of the configuration hash (:func:`config_hash`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SETTINGS = {"class_il": "", "task_il": "_task_il", "domain_il": ""}  # accuracy column -> results.json suffix
SETTING_LABELS = {"class_il": "Class-IL", "task_il": "Task-IL", "domain_il": "Domain-IL"}
TOP_KEYS = ("title", "description", "stream", "preset", "common", "seeds", "settings", "reference_source", "memory_axis", "cells")
#: the x axis of accuracy versus memory: what a method keeps besides the model (default), or what its budget counts
#: (``counted``: with budget.convention=memo and count_model=true, model parameters plus exemplars, as MEMO)
MEMORY_AXES = ("besides_model", "counted")
CELL_KEYS = ("method", "preset", "name", "overrides", "buffers", "equal_bytes", "budgets_mb", "per_buffer", "reference",
             "source", "note")
NAME_RE = re.compile(r"^[A-Za-z0-9_.+]+$")
OVERRIDE_RE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.\-/@]*=")
# keys a suite may not set: they come from the suite's own fields or are execution settings
RESERVED = {"seed": "seeds come from the suite's 'seeds' list", "stream": "the stream is the suite's 'stream'",
            "method": "the method is the cell's 'method'", "hydra": "Hydra settings are not part of a suite",
            "data": "where data live is an execution setting (clzoo-leaderboard run --data-root)",
            "log": "logging is set by clzoo-leaderboard", "resume": "resuming is handled by clzoo-leaderboard"}
# (input shape, number of classes) of the built-in datasets, for equal-byte budgets without loading data
KNOWN_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
                "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


class SuiteError(ValueError):
    """A suite file is malformed, or one of its cells does not compose into a run configuration."""


@dataclass(frozen=True)
class Budget:
    """How much a cell may keep: nothing set (``none``), ``samples`` (N exemplars), ``bytes_of`` (the bytes of
    ER's buffer of N samples) or ``mb``."""

    kind: str = "none"
    value: float | int | None = None

    ORDER = ("none", "samples", "bytes_of", "mb")

    @property
    def suffix(self) -> str:
        if self.kind == "none":
            return ""
        prefix = {"samples": "b", "bytes_of": "bytes", "mb": "mb"}[self.kind]
        return f"-{prefix}{self.value:g}" if self.kind == "mb" else f"-{prefix}{self.value}"

    @property
    def n(self) -> int | None:
        """The sample count N a ``samples`` / ``bytes_of`` budget refers to."""
        return int(self.value) if self.kind in ("samples", "bytes_of") else None

    def label(self, mb: float | None = None) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "samples":
            return f"{self.value} samples"
        if self.kind == "bytes_of":
            return f"{mb:.4g} MB = {self.value} ER samples" if mb is not None else f"bytes of {self.value} ER samples"
        return f"{self.value:g} MB"

    def group(self) -> str:
        """A short title for the plots' panels."""
        if self.kind == "none":
            return "no buffer"
        if self.kind == "samples":
            return f"buffer {self.value} samples"
        if self.kind == "bytes_of":
            return f"bytes of {self.value} ER samples"
        return f"{self.value:g} MB"

    def sort_key(self) -> tuple:
        return (self.ORDER.index(self.kind), float(self.value or 0))


@dataclass
class Cell:
    """One row of a leaderboard table: a method with its overrides at one budget (run once per seed)."""

    name: str
    method: str
    budget: Budget
    overrides: list[str]
    reference: dict[str, float] | None = None
    source: str | None = None
    note: str | None = None
    index: int = 0  # position of the cell's entry in the suite (display order)
    preset: str | None = None  # the experiment preset of the cell (conf/experiment/<preset>.yaml)

    @property
    def id(self) -> str:
        return self.name + self.budget.suffix


@dataclass
class Suite:
    name: str
    path: Path
    stream: str
    seeds: list[int]
    cells: list[Cell]
    common: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=lambda: ["class_il", "task_il"])
    title: str | None = None
    description: str | None = None
    reference_source: str | None = None
    memory_axis: str = "besides_model"
    preset: str | None = None

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise SuiteError(f"{self.path}: no cell '{cell_id}'; cells are: {', '.join(c.id for c in self.cells)}")

    def select(self, only: list[str] | None = None, cells: list[str] | None = None) -> list[Cell]:
        """The cells of the methods (or cell names) ``only`` and / or with the ids ``cells``."""
        chosen = self.cells
        if cells:
            chosen = [self.cell(i) for i in cells]
        if only:
            known = {c.method for c in self.cells} | {c.name for c in self.cells}
            unknown = [m for m in only if m not in known]
            if unknown:
                raise SuiteError(f"{self.path}: --only {' '.join(unknown)}: no such method in the suite; it has "
                                 f"{', '.join(sorted(known))}")
            chosen = [c for c in chosen if c.method in only or c.name in only]
        return chosen

    def budget_mb(self, cell: Cell) -> float | None:
        """``budget.mb`` of a byte-budget cell (None for the others)."""
        if cell.budget.kind == "mb":
            return float(cell.budget.value)
        if cell.budget.kind == "bytes_of":
            shape, n_classes = self.stream_shape()
            return er_buffer_bytes(cell.budget.n, shape, n_classes) / 2**20
        return None

    def overrides(self, cell: Cell, seed: int | None = None) -> list[str]:
        """The clzoo-run overrides of ``cell`` (with ``seed=<seed>`` when given)."""
        preset = cell.preset or self.preset
        out = [f"stream={self.stream}", f"method={cell.method}", *([f"+experiment={preset}"] if preset else []),
               *self.common, *cell.overrides]
        if cell.budget.kind == "samples":
            out.append(f"method.buffer.capacity={cell.budget.n}")
        elif cell.budget.kind in ("bytes_of", "mb"):
            out.append(f"budget.mb={self.budget_mb(cell)!r}")
        out += self._per_buffer.get((cell.index, cell.budget.n), []) if cell.budget.n is not None else []
        if seed is not None:
            out.append(f"seed={seed}")
        return out

    # filled by load_suite: per_buffer overrides keyed by (cell entry index, N)
    _per_buffer: dict = field(default_factory=dict, repr=False)
    _shape: tuple | None = field(default=None, repr=False)

    def stream_shape(self) -> tuple[tuple[int, ...], int]:
        """(input shape, number of classes) of the suite's dataset, for equal-byte budgets."""
        if self._shape is None:
            from ..config import compose

            try:
                cfg = compose([f"stream={self.stream}", *([f"+experiment={self.preset}"] if self.preset else []),
                               *[o for o in self.common if o.startswith("stream.")]])
            except Exception as err:  # noqa: BLE001 - reported with the suite's name
                raise SuiteError(f"{self.path}: stream '{self.stream}' does not compose: {err}") from err
            dataset = cfg["stream"]["dataset"]
            if dataset in KNOWN_SHAPES:
                self._shape = KNOWN_SHAPES[dataset]
            else:
                from ..data.sources import load_source

                src = load_source(dataset, cfg["data"]["root"], False, cfg["stream"].get("path"))
                self._shape = (tuple(src.input_shape), src.n_classes)
        return self._shape


def er_buffer_bytes(n: int, input_shape, n_classes: int) -> int:
    """Bytes ER's reservoir buffer of ``n`` samples keeps: inputs (uint8) + labels + task ids + its counters."""
    from ..memory.buffer import ReplayBuffer

    return n * ReplayBuffer.bytes_per_sample(tuple(input_shape), n_classes) + ReplayBuffer.FIXED_BYTES


# ---------------------------------------------------------------------------------------------- validation
def _fail(where: str, msg: str):
    raise SuiteError(f"{where}: {msg}")


def _override_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        _fail(where, f"must be a list of overrides such as [trainer.optimizer.lr=0.1], got {value!r}")
    for item in value:
        if not isinstance(item, str) or not OVERRIDE_RE.match(item):
            _fail(where, f"'{item}' is not an override of the form key=value")
        key = item.lstrip("+~").split("=", 1)[0]
        root = key.split(".", 1)[0].split("/", 1)[0]
        # stream.* and method.* options are fine; choosing another stream or method config is not
        if root in RESERVED and (key == root or root not in ("stream", "method")):
            _fail(where, f"'{item}': {RESERVED[root]}")
    return list(value)


def _positive_ints(value, where: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                           for v in value):
        _fail(where, f"must be a non-empty list of positive integers (sample counts), got {value!r}")
    if len(set(value)) != len(value):
        _fail(where, f"has duplicates: {value}")
    return list(value)


def _reference(value, settings: list[str], where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        _fail(where, f"must map accuracy settings ({', '.join(settings)}) to published accuracies in %, got {value!r}")
    out = {}
    for key, num in value.items():
        if key not in settings:
            _fail(where, f"unknown setting '{key}': the suite's settings are {', '.join(settings)}")
        if not isinstance(num, (int, float)) or isinstance(num, bool) or not 0 <= num <= 100:
            _fail(where, f"{key}: {num!r} is not an accuracy in % (0..100)")
        out[key] = float(num)
    return out


def _add_suite_conf(path: Path) -> None:
    """A suite naming presets finds those of its repository (``<repo>/experiments/x.yaml`` -> ``<repo>/conf``)
    from any working directory: that folder joins ``CLZOO_CONF_PATH`` (inherited by the runs it starts)."""
    import os

    from ..presets import ENV_VAR, folders

    conf = Path(path).resolve().parent.parent / "conf"
    if (conf / "experiment").is_dir() and conf not in folders():
        os.environ[ENV_VAR] = os.pathsep.join(p for p in (os.environ.get(ENV_VAR), str(conf)) if p)


def _preset(value, where: str) -> str | None:
    """A preset name of ``conf/experiment/`` (checked: it exists and its configs are installed)."""
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_RE.match(value):
        _fail(where, f"must be the name of an experiment preset (conf/experiment/NAME.yaml), got {value!r}")
    from ..presets import PresetError, check

    try:
        check(value)
    except PresetError as err:
        _fail(where, str(err))
    return value


def _preset_method(preset: str | None, where: str, required: bool = True) -> str | None:
    from ..presets import selections

    method = selections(preset).get("method") if preset else None
    if method is None and required:
        _fail(where, f"preset '{preset}' chooses no method (override /method: NAME in its defaults); give 'method'")
    return method


def parse_suite(data: Any, path: str | Path, name: str | None = None) -> Suite:
    """Validate a suite's parsed YAML and expand it into cells (raises :class:`SuiteError`)."""
    path = Path(path)
    where = str(path)
    if not isinstance(data, dict):
        _fail(where, "a suite is a mapping with keys stream, seeds, cells (and optionally "
                     f"{', '.join(k for k in TOP_KEYS if k not in ('stream', 'seeds', 'cells'))})")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(map(str, unknown))}; a suite has {', '.join(TOP_KEYS)}")
    for key in ("stream", "seeds", "cells"):
        if key not in data:
            _fail(where, f"missing required key '{key}'")
    stream = data["stream"]
    if not isinstance(stream, str) or not NAME_RE.match(stream):
        _fail(f"{where}: stream", f"must be the name of a stream config (e.g. split_mnist), got {stream!r}")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        _fail(f"{where}: seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        _fail(f"{where}: seeds", f"has duplicates: {seeds}")
    settings = data.get("settings", ["class_il", "task_il"])
    if not isinstance(settings, list) or not settings or any(s not in SETTINGS for s in settings):
        _fail(f"{where}: settings", f"must be a non-empty list of {', '.join(SETTINGS)}, got {settings!r}")
    common = _override_list(data.get("common"), f"{where}: common")
    for key in ("title", "description", "reference_source"):
        if data.get(key) is not None and not isinstance(data[key], str):
            _fail(f"{where}: {key}", f"must be a string, got {data[key]!r}")
    memory_axis = data.get("memory_axis", "besides_model")
    if memory_axis not in MEMORY_AXES:
        _fail(f"{where}: memory_axis", f"must be one of {', '.join(MEMORY_AXES)}, got {memory_axis!r}")
    if data.get("preset") or any(isinstance(c, dict) and c.get("preset") for c in data.get("cells") or []):
        _add_suite_conf(path)
    suite_preset = _preset(data.get("preset"), f"{where}: preset")
    cells_in = data["cells"]
    if not isinstance(cells_in, list) or not cells_in:
        _fail(f"{where}: cells", "must be a non-empty list of cells (each with at least 'method')")

    suite = Suite(name=name or path.stem, path=path, stream=stream, seeds=list(seeds), cells=[], common=common,
                  settings=list(settings), title=data.get("title"), description=data.get("description"),
                  reference_source=data.get("reference_source"), memory_axis=memory_axis, preset=suite_preset)
    for i, entry in enumerate(cells_in):
        cw = f"{where}: cells[{i}]"
        if not isinstance(entry, dict) or ("method" not in entry and "preset" not in entry):
            _fail(cw, f"must be a mapping with at least 'method' (or a 'preset' choosing one), got {entry!r}")
        cell_preset = _preset(entry.get("preset"), f"{cw}: preset")
        method = entry.get("method") or _preset_method(cell_preset, f"{cw}: preset")
        if cell_preset and entry.get("method"):
            chosen = _preset_method(cell_preset, f"{cw}: preset", required=False)
            if chosen and chosen != entry["method"]:
                _fail(cw, f"method '{entry['method']}' but preset '{cell_preset}' chooses method {chosen}; "
                          "give one of them")
        if not isinstance(method, str) or not NAME_RE.match(method):
            _fail(cw, f"method must be the name of a method config (e.g. der), got {method!r}")
        cw = f"{cw} (method {method})"
        unknown = [k for k in entry if k not in CELL_KEYS]
        if unknown:
            _fail(cw, f"unknown key(s) {', '.join(map(str, unknown))}; a cell has {', '.join(CELL_KEYS)}")
        cname = entry.get("name", method)
        if not isinstance(cname, str) or not NAME_RE.match(cname):
            _fail(cw, f"name must use letters, digits and _ . + only (no '-': it separates the budget in cell "
                      f"ids), got {cname!r}")
        overrides = _override_list(entry.get("overrides"), f"{cw}: overrides")
        buffers = _positive_ints(entry.get("buffers"), f"{cw}: buffers")
        equal_bytes = _positive_ints(entry.get("equal_bytes"), f"{cw}: equal_bytes")
        mbs = entry.get("budgets_mb") or []
        if not isinstance(mbs, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                for v in mbs):
            _fail(f"{cw}: budgets_mb", f"must be a list of positive numbers (MB = 2^20 bytes), got {mbs!r}")
        per_buffer = entry.get("per_buffer") or {}
        if not isinstance(per_buffer, dict):
            _fail(f"{cw}: per_buffer", f"must map a buffer size N to a list of overrides, got {per_buffer!r}")
        for n, ovs in per_buffer.items():
            if n not in buffers and n not in equal_bytes:
                _fail(f"{cw}: per_buffer", f"{n!r} is neither in buffers {buffers} nor in equal_bytes {equal_bytes}")
            suite._per_buffer[(i, n)] = _override_list(ovs, f"{cw}: per_buffer[{n}]")
        budgets = ([Budget("samples", n) for n in buffers] + [Budget("bytes_of", n) for n in equal_bytes]
                   + [Budget("mb", float(v)) for v in mbs]) or [Budget()]
        ref = entry.get("reference")
        refs: dict = {}
        if ref is not None:
            if buffers or equal_bytes or mbs:
                if not isinstance(ref, dict) or not all(isinstance(k, int) for k in ref):
                    _fail(f"{cw}: reference", "a cell with buffers gives its references by buffer size, e.g. "
                                              "{200: {class_il: 80.43, task_il: 97.86}}")
                for n, r in ref.items():
                    if n not in buffers:
                        _fail(f"{cw}: reference", f"{n} is not one of the cell's sample buffers {buffers} "
                                                  "(published numbers are for sample budgets)")
                    refs[n] = _reference(r, suite.settings, f"{cw}: reference[{n}]")
            else:
                refs[None] = _reference(ref, suite.settings, f"{cw}: reference")
        for key in ("source", "note"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                _fail(f"{cw}: {key}", f"must be a string, got {entry[key]!r}")
        source = entry.get("source") or suite.reference_source
        for budget in budgets:
            reference = refs.get(budget.n if budget.kind == "samples" else None) if budget.kind in ("samples", "none") \
                else None
            suite.cells.append(Cell(cname, method, budget, overrides, reference, source if reference else None,
                                    entry.get("note"), i, cell_preset))
    seen: dict[str, int] = {}
    for c in suite.cells:
        if c.id in seen:
            _fail(where, f"two cells have the id '{c.id}' (cells[{seen[c.id]}] and cells[{c.index}]); give one a "
                         "different 'name'")
        seen[c.id] = c.index
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate ``experiments/<name>.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from err
    return parse_suite(data, path)


# ---------------------------------------------------------------------------------------------- hashing
EXECUTION_KEYS = ("_choices", "resume", "log", "hydra", "data")
EXECUTION_TRAINER_KEYS = ("device", "num_threads", "max_tasks", "log_every", "eval_batch_size")


def config_hash(cfg: dict) -> str:
    """A short hash of what a run computes: its configuration without execution settings (where data live,
    device, threads, logging, resuming, evaluation batch size), so a run found again on another machine, or
    re-run by ``check`` with another ``--data-root``, matches."""
    from ..engine.checkpoint import without_neutral_defaults

    relevant = {k: v for k, v in without_neutral_defaults(cfg).items() if k not in EXECUTION_KEYS}
    if isinstance(relevant.get("trainer"), dict):
        relevant["trainer"] = {k: v for k, v in relevant["trainer"].items() if k not in EXECUTION_TRAINER_KEYS}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def suite_hash(cell_hashes: list[str]) -> str:
    """One hash for a whole table: over its cells' configuration hashes (seed 0 of each)."""
    return hashlib.sha256(" ".join(sorted(cell_hashes)).encode()).hexdigest()[:12]


def compose_cell(suite: Suite, cell: Cell, seed: int, data_root: str | None = None) -> dict:
    """The run configuration of ``cell`` at ``seed`` (raises :class:`SuiteError` naming the cell)."""
    from ..config import compose

    overrides = suite.overrides(cell, seed) + ([f"data.root={data_root}"] if data_root else [])
    try:
        return compose(overrides)
    except Exception as err:  # noqa: BLE001 - Hydra raises several types; all mean "does not compose"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SuiteError(f"{suite.path}: cell {cell.id} does not compose ({message}); overrides: "
                         f"{' '.join(overrides)}") from err


def with_seed(cfg: dict, seed: int) -> dict:
    out = copy.deepcopy(cfg)
    out["seed"] = int(seed)
    return out
