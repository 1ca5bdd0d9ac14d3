"""The memory ledger: what a method keeps between tasks, in bytes, by category.

Rule: *what you keep is what you pay for*. Everything a method carries from one task to the next lives in its
``state_dict()``; the ledger sums the bytes of those tensors (at their stored dtype) and files each under a
category. A module declares its category with :func:`tag_memory`; a module holding several kinds of tensors
declares them per tensor with a ``memory_categories`` dict (``{"x": "exemplars", ...}``). Untagged state is
``other``.
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


def tag_memory(module: nn.Module, category: str) -> nn.Module:
    """File every tensor under ``module`` in the ledger category ``category``; returns the module."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown memory category '{category}'; choose one of {', '.join(CATEGORIES)}")
    module.memory_category = category
    return module


def categorize(module: nn.Module) -> dict[str, str]:
    """Map every state_dict key of ``module`` to its ledger category."""
    result: dict[str, str] = {}

    def walk(mod: nn.Module, prefix: str, inherited: str) -> None:
        category = getattr(mod, "memory_category", inherited)
        per_tensor = getattr(mod, "memory_categories", {})
        for name, _ in list(mod._parameters.items()) + list(mod._buffers.items()):
            result[prefix + name] = per_tensor.get(name, category)
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

    @property
    def total_bytes(self) -> int:
        return sum(self.by_category.values())

    @property
    def budgeted_bytes(self) -> int:
        """Bytes that count against the budget: everything, or everything but the model (count_model=false)."""
        return sum(b for c, b in self.by_category.items() if self.count_model or c not in MODEL_CATEGORIES)

    @property
    def over_budget(self) -> bool:
        return self.budget_bytes is not None and self.budgeted_bytes > self.budget_bytes

    def table(self) -> str:
        """A human-readable per-category table."""
        lines = [f"{'category':<16}{'bytes':>14}{'MB':>10}  counted"]
        for cat, b in self.by_category.items():
            if b:
                counted = "yes" if (self.count_model or cat not in MODEL_CATEGORIES) else "no"
                lines.append(f"{cat:<16}{b:>14,}{b / MB:>10.3f}  {counted}")
        lines.append(f"{'counted total':<16}{self.budgeted_bytes:>14,}{self.budgeted_bytes / MB:>10.3f}")
        if self.budget_bytes is not None:
            lines.append(f"{'budget':<16}{self.budget_bytes:>14,}{self.budget_bytes / MB:>10.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total_bytes": self.total_bytes, "budgeted_bytes": self.budgeted_bytes,
                "by_category": dict(self.by_category), "budget_bytes": self.budget_bytes,
                "count_model": self.count_model}


def measure(module: nn.Module, count_model: bool = False, budget_bytes: int | None = None,
            exclude: tuple[str, ...] = ()) -> Ledger:
    """Measure the bytes of ``module.state_dict()`` by category (tensors shared between keys counted once).

    ``exclude`` drops keys under the given prefixes (used to plan an ``auto`` buffer before it exists).
    """
    categories = categorize(module)
    by_category = {c: 0 for c in CATEGORIES}
    by_tensor: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in module.state_dict(keep_vars=True).items():
        if any(key.startswith(p) for p in exclude):
            continue
        if tensor is None or not hasattr(tensor, "untyped_storage"):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (id(tensor), 0)
        if ident in seen:
            continue
        seen.add(ident)
        nbytes = tensor.numel() * tensor.element_size()
        by_tensor[key] = nbytes
        by_category[categories.get(key, "other")] += nbytes
    return Ledger(by_category, count_model, budget_bytes, by_tensor)


class BudgetError(ValueError):
    """A method keeps more memory than ``budget.mb`` allows, or the budget cannot fit what it must keep."""


@dataclass
class Budget:
    """``budget.mb`` (MB = 2^20 bytes; None = unlimited), whether the model counts, whether to enforce."""

    mb: float | None = None
    count_model: bool = False
    enforce: bool = True

    @property
    def bytes(self) -> int | None:
        return None if self.mb is None else int(round(float(self.mb) * MB))

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
