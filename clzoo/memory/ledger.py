"""The memory ledger: what a method keeps between tasks, in bytes, by category.

Rule: *what you keep is what you pay for*. Everything a method carries from one task to the next lives in its
``state_dict()``; the ledger sums the bytes of those tensors (at their stored dtype) and files each under a
category. A module declares its category with :func:`tag_memory`; a module holding several kinds of tensors
declares them per tensor with a ``memory_categories`` dict (``{"x": "exemplars", ...}``). Untagged state is
``other``.

The model categories (``backbone``, ``heads``) are what the model holds: when the measured module is a method
(it has a ``model`` sub-module), only tensors under ``model.`` are filed there. State elsewhere that claims a
model category is filed under ``other``, so it counts against ``budget.mb`` whatever ``budget.count_model``
says; :func:`misfiled` lists it (the conformance kit fails on it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

MB = 2**20  # MB = 2^20 bytes, as in MEMO (Zhou et al., ICLR 2023)

CATEGORIES = (
    "exemplars",        # stored inputs, at the dtype the dataset gives them (uint8 for images)
    "exemplar_extras",  # labels, task ids, logits, scores stored next to exemplars
    "backbone",         # the feature extractor
    "heads",            # classifier heads
    "teachers",         # frozen copies of earlier models
    "importance",       # parameter importance and anchor parameters (EWC, SI, MAS)
    "prompts",          # prompt pools and keys
    "prototypes",       # class means / prototypes
    "per_task",         # per-task parameters (reprogramming layers, task BatchNorm, task heads, task embeddings)
    "generator",        # a network that generates the model's weights (a hypernetwork): the model itself for
                        #   budget purposes (counted only with count_model=true, like backbone and heads)
    "other",
)
MODEL_CATEGORIES = ("backbone", "heads", "generator")

#: how the budget counts. ``full``: every category (the model's only with count_model). ``memo``: the accounting of
#: MEMO (Zhou et al., ICLR 2023; see clzoo.memory.aligned): exemplar pixels, plus, with count_model, the float32
#: parameters of the feature extractor (``backbone`` and ``per_task`` parameters; heads, BatchNorm statistics,
#: stored logits and labels, teachers and the rest are reported but not counted).
CONVENTIONS = ("full", "memo")
MEMO_MODEL_CATEGORIES = ("backbone", "per_task")


def tag_memory(module: nn.Module, category: str) -> nn.Module:
    """File every tensor under ``module`` in the ledger category ``category``; returns the module."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown memory category '{category}'; choose one of {', '.join(CATEGORIES)}")
    module.memory_category = category
    return module


def _model_prefix(module: nn.Module) -> str:
    """Where the model lives in ``module``'s state_dict: ``model.`` for a method, everything otherwise."""
    return "model." if isinstance(module._modules.get("model"), nn.Module) else ""


def misfiled(module: nn.Module) -> list[str]:
    """state_dict keys of ``module`` tagged a model category (backbone / heads) that are not part of its model."""
    prefix = _model_prefix(module)
    return [key for key, cat in _declared_categories(module).items()
            if cat in MODEL_CATEGORIES and not key.startswith(prefix)]


def categorize(module: nn.Module) -> dict[str, str]:
    """Map every state_dict key of ``module`` to its ledger category (model categories only inside the model)."""
    prefix = _model_prefix(module)
    return {key: ("other" if cat in MODEL_CATEGORIES and not key.startswith(prefix) else cat)
            for key, cat in _declared_categories(module).items()}


def _declared_categories(module: nn.Module) -> dict[str, str]:
    """Map every state_dict key of ``module`` to the category its tags declare."""
    result: dict[str, str] = {}

    def walk(mod: nn.Module, prefix: str, inherited: str) -> None:
        category = getattr(mod, "memory_category", inherited)
        per_tensor = getattr(mod, "memory_categories", {})
        for name, _ in list(mod._parameters.items()) + list(mod._buffers.items()):
            result[prefix + name] = per_tensor.get(name, category)
            if result[prefix + name] not in CATEGORIES:
                raise ValueError(f"'{prefix + name}' is filed under unknown memory category '{result[prefix + name]}'; "
                                 f"choose one of {', '.join(CATEGORIES)}")
        for name, child in mod._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.", category)

    walk(module, "", getattr(module, "memory_category", "other"))
    return result


@dataclass
class Ledger:
    """Bytes kept, by category, after one task."""

    by_category: dict[str, int]
    count_model: bool = False
    budget_bytes: int | None = None
    by_tensor: dict[str, int] = field(default_factory=dict, repr=False)
    #: bytes of trainable-parameter tensors (nn.Parameter) by category, for the ``memo`` convention
    param_bytes: dict[str, int] = field(default_factory=dict)
    convention: str = "full"

    @property
    def total_bytes(self) -> int:
        return sum(self.by_category.values())

    @property
    def memo_bytes(self) -> int:
        """MEMO's accounting: exemplar pixels plus the parameters of the feature extractor (model and expansions)."""
        return self.by_category.get("exemplars", 0) + sum(self.param_bytes.get(c, 0) for c in MEMO_MODEL_CATEGORIES)

    @property
    def budgeted_bytes(self) -> int:
        """Bytes that count against the budget under the ledger's convention (see :data:`CONVENTIONS`)."""
        if self.convention == "memo":
            model = sum(self.param_bytes.get(c, 0) for c in MEMO_MODEL_CATEGORIES) if self.count_model else 0
            return self.by_category.get("exemplars", 0) + model
        return sum(b for c, b in self.by_category.items() if self.count_model or c not in MODEL_CATEGORIES)

    def counted(self, category: str) -> bool:
        """Whether ``category`` counts against the budget (the whole category, in the ``full`` convention)."""
        if self.convention == "memo":
            return category == "exemplars" or (self.count_model and category in MEMO_MODEL_CATEGORIES)
        return self.count_model or category not in MODEL_CATEGORIES

    @property
    def over_budget(self) -> bool:
        return self.budget_bytes is not None and self.budgeted_bytes > self.budget_bytes

    def table(self) -> str:
        """A human-readable per-category table."""
        lines = [f"{'category':<16}{'bytes':>14}{'MB':>10}  counted"]
        for cat, b in self.by_category.items():
            if b:
                counted = "yes" if self.counted(cat) else "no"
                if self.convention == "memo" and self.counted(cat) and cat != "exemplars":
                    counted = f"parameters ({self.param_bytes.get(cat, 0):,} B)"
                lines.append(f"{cat:<16}{b:>14,}{b / MB:>10.3f}  {counted}")
        lines.append(f"{'counted total':<16}{self.budgeted_bytes:>14,}{self.budgeted_bytes / MB:>10.3f}")
        if self.budget_bytes is not None:
            lines.append(f"{'budget':<16}{self.budget_bytes:>14,}{self.budget_bytes / MB:>10.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total_bytes": self.total_bytes, "budgeted_bytes": self.budgeted_bytes,
                "by_category": dict(self.by_category), "budget_bytes": self.budget_bytes,
                "count_model": self.count_model, "convention": self.convention,
                "parameter_bytes": dict(self.param_bytes), "memo_bytes": self.memo_bytes}


def measure(module: nn.Module, count_model: bool = False, budget_bytes: int | None = None,
            exclude: tuple[str, ...] = (), convention: str = "full") -> Ledger:
    """Measure the bytes of ``module.state_dict()`` by category (tensors shared between keys counted once).

    ``exclude`` drops keys under the given prefixes (used to plan an ``auto`` buffer before it exists).
    """
    categories = categorize(module)
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown budget.convention '{convention}'; choose one of {', '.join(CONVENTIONS)}")
    by_category = {c: 0 for c in CATEGORIES}
    param_bytes = {c: 0 for c in CATEGORIES}
    by_tensor: dict[str, int] = {}
    seen: set[tuple] = set()
    for key, tensor in module.state_dict(keep_vars=True).items():
        if any(key.startswith(p) for p in exclude):
            continue
        if tensor is None or not hasattr(tensor, "untyped_storage"):
            continue
        # shared storage is counted once; the device is part of the identity (a buffer's samples on the GPU and its
        # counters on the host are different memory even if their addresses coincide)
        ident = ((str(tensor.device), tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel()
                 else (id(tensor), 0))
        if ident in seen:
            continue
        seen.add(ident)
        nbytes = tensor.numel() * tensor.element_size()
        by_tensor[key] = nbytes
        by_category[categories.get(key, "other")] += nbytes
        if isinstance(tensor, nn.Parameter):
            param_bytes[categories.get(key, "other")] += nbytes
    return Ledger(by_category, count_model, budget_bytes, by_tensor, param_bytes, convention)


class BudgetError(ValueError):
    """A method keeps more memory than ``budget.mb`` allows, or the budget cannot fit what it must keep."""


@dataclass
class Budget:
    """``budget.mb`` (MB = 2^20 bytes; None = unlimited), whether the model counts, whether to enforce."""

    mb: float | None = None
    count_model: bool = False
    enforce: bool = True
    convention: str = "full"

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown budget.convention '{self.convention}'; choose one of {', '.join(CONVENTIONS)}")

    @property
    def bytes(self) -> int | None:
        return None if self.mb is None else int(round(float(self.mb) * MB))

    def measure(self, module: nn.Module, exclude: tuple[str, ...] = ()) -> "Ledger":
        """The ledger of ``module`` under this budget's settings (count_model, convention)."""
        return measure(module, self.count_model, self.bytes, exclude, self.convention)

    def sample_cost(self, full_bytes: int, input_bytes: int) -> int:
        """What one stored exemplar costs against this budget: all it stores (``full``) or its pixels (``memo``)."""
        return input_bytes if self.convention == "memo" else full_bytes

    def check(self, ledger: Ledger, when: str) -> str | None:
        """Raise :class:`BudgetError` (enforce) or return a violation message when ``ledger`` is over budget."""
        if not ledger.over_budget:
            return None
        msg = (f"memory over budget {when}: keeps {ledger.budgeted_bytes:,} counted bytes "
               f"({ledger.budgeted_bytes / MB:.3f} MB) > budget.mb={self.mb} ({self.bytes:,} bytes)")
        if self.enforce:
            raise BudgetError(f"{msg}; raise budget.mb, shrink the method's state (e.g. method.buffer.capacity), "
                              f"or set budget.enforce=false to record the violation instead\n{ledger.table()}")
        return msg
