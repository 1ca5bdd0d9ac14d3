"""One memory axis for models and exemplars: the accounting of "A Model or 603 Exemplars" (MEMO).

Zhou, Wang, Ye, Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient Class-Incremental Learning", ICLR 2023;
the rules follow the authors' ``utils/model2exemplar.py`` (github.com/wangkiw/ICLR23-MEMO @ d261c11):

* a model costs 4 bytes (float32) per backbone parameter; the classifier head is not counted;
* an exemplar costs one uint8 image, ``H * W * C`` bytes (CIFAR 3,072; ImageNet at 224 px 150,528);
* MB = 2^20 bytes; every setting starts from 2,000 exemplars.

*Aligned ("fair") memory*: every method gets the total of DER (one backbone per task plus 2,000 exemplars); a method
that holds less model fills the difference with exemplars. *AUC memory points*: the totals of DER with backbones of
growing size; at a point, model-based methods (DER, MEMO) use that point's smaller backbone and exemplar-based
methods keep the benchmark backbone, each filling the rest with exemplars.

These are pure functions of parameter counts. In a live run the same numbers come from the ledger with
``budget.convention=memo budget.count_model=true`` (exemplar pixels plus backbone parameters), so an aligned
comparison is a budget: ``budget.mb=aligned_budget_mb(...)`` with ``method.buffer.capacity=auto``. The area under
accuracy versus memory is the leaderboard's (:func:`clzoo.leaderboard.build.auc_trapezoid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ledger import MB

BASE_EXEMPLARS = 2000
BYTES_PER_PARAMETER = 4


def model_bytes(n_params: int) -> int:
    """Bytes of a float32 model with ``n_params`` parameters."""
    return int(n_params) * BYTES_PER_PARAMETER


def exemplar_bytes(image_shape) -> int:
    """Bytes of one exemplar stored as a uint8 image of ``image_shape`` (e.g. (3, 32, 32) -> 3,072)."""
    return math.prod(int(s) for s in image_shape)


def exemplars_worth(n_params: int, image_shape) -> float:
    """How many exemplars a model of ``n_params`` parameters is worth (ResNet-32 on CIFAR: 603.5)."""
    return model_bytes(n_params) / exemplar_bytes(image_shape)


@dataclass(frozen=True)
class MemoryPoint:
    """A method's model and exemplars at one total memory size."""

    method_kind: str      # "der", "memo" or "single" (one fixed backbone: iCaRL, ER, ...)
    model_params: int     # parameters the method keeps at the end of the stream (backbone only)
    exemplars: int        # exemplars it may store
    image_bytes: int

    @property
    def model_bytes(self) -> int:
        return model_bytes(self.model_params)

    @property
    def exemplar_bytes(self) -> int:
        return self.exemplars * self.image_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.exemplar_bytes

    @property
    def total_mb(self) -> float:
        return self.total_bytes / MB


def kept_params(kind: str, n_tasks: int, backbone_params: int, generalized_params: int = 0,
                specialized_params: int = 0) -> int:
    """Backbone parameters a method keeps after ``n_tasks`` tasks: DER one backbone per task, MEMO the generalized
    blocks once plus one specialized block per task, a single-backbone method one backbone."""
    if kind == "der":
        return n_tasks * backbone_params
    if kind == "memo":
        if not generalized_params or not specialized_params:
            raise ValueError("MEMO's model size needs generalized_params and specialized_params")
        return generalized_params + n_tasks * specialized_params
    if kind == "single":
        return backbone_params
    raise ValueError(f"unknown method kind '{kind}'; choose der, memo or single")


def fill_with_exemplars(kind: str, total_bytes: int, params: int, image_shape) -> MemoryPoint:
    """The point where a method keeping ``params`` backbone parameters fills ``total_bytes`` with exemplars
    (rounded down, as the authors' code)."""
    img = exemplar_bytes(image_shape)
    free = total_bytes - model_bytes(params)
    if free < 0:
        raise ValueError(f"a {kind} model of {params:,} parameters ({model_bytes(params):,} bytes) does not fit in "
                         f"{total_bytes:,} bytes ({total_bytes / MB:.2f} MB)")
    return MemoryPoint(kind, params, free // img, img)


def aligned_memory(kind: str, n_tasks: int, backbone_params: int, image_shape, generalized_params: int = 0,
                   specialized_params: int = 0, base_exemplars: int = BASE_EXEMPLARS) -> MemoryPoint:
    """Aligned ("fair") memory: the total of DER after ``n_tasks`` tasks (``n_tasks`` backbones plus
    ``base_exemplars`` exemplars), filled by method ``kind``. CIFAR-100 B0 Inc10 with ResNet-32: MEMO 3,312
    exemplars, a single-backbone method 7,431, DER 2,000."""
    total = model_bytes(n_tasks * backbone_params) + base_exemplars * exemplar_bytes(image_shape)
    params = kept_params(kind, n_tasks, backbone_params, generalized_params, specialized_params)
    return fill_with_exemplars(kind, total, params, image_shape)


def aligned_budget_mb(n_tasks: int, backbone_params: int, image_shape, base_exemplars: int = BASE_EXEMPLARS) -> float:
    """DER's total after ``n_tasks`` tasks in MB (MB = 2^20 bytes): the ``budget.mb`` of an aligned comparison."""
    return (model_bytes(n_tasks * backbone_params) + base_exemplars * exemplar_bytes(image_shape)) / MB


def auc_points(n_tasks: int, benchmark_params: int, point_backbones: list[tuple[int, int, int]], image_shape,
               base_exemplars: int = BASE_EXEMPLARS) -> list[dict[str, MemoryPoint]]:
    """MEMO's memory-AUC points. ``point_backbones`` lists, smallest first, each point's backbone as
    ``(params, generalized_params, specialized_params)``; ``benchmark_params`` is the single-backbone methods'
    network (ResNet-32 on CIFAR). The first point is the benchmark network with ``base_exemplars`` exemplars (DER and
    MEMO there use the smallest backbone and fill the rest); every later point is DER's total with that point's
    backbone. Returns, per point, the :class:`MemoryPoint` of each kind (``der``, ``memo``, ``single``)."""
    img = exemplar_bytes(image_shape)
    points = []
    for i, (params, g, s) in enumerate(point_backbones):
        if i == 0:
            total = model_bytes(benchmark_params) + base_exemplars * img
        else:
            total = model_bytes(n_tasks * params) + base_exemplars * img
        points.append({
            "der": fill_with_exemplars("der", total, kept_params("der", n_tasks, params), image_shape),
            "memo": fill_with_exemplars("memo", total, kept_params("memo", n_tasks, params, g, s), image_shape),
            "single": fill_with_exemplars("single", total, benchmark_params, image_shape),
        })
    return points


__all__ = ["BASE_EXEMPLARS", "MemoryPoint", "aligned_budget_mb", "aligned_memory", "auc_points", "exemplar_bytes",
           "exemplars_worth", "fill_with_exemplars", "kept_params", "model_bytes"]
