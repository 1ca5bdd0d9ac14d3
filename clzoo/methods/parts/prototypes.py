"""A per-class prototype store and the nearest-class-mean classifier.

:class:`PrototypeStore` keeps one vector per class (usually the mean feature of the class's training data), and
optionally per class the mean feature variance ``trace(Cov_c) / D`` (PASS's radius, Zhu et al. CVPR 2021) or the
full covariance. Every tensor is preallocated for all of the stream's classes (state shapes never change, a
checkpoint always loads) and filed by the ledger under ``prototypes``. :func:`ncm_logits` turns features and
prototypes into nearest-class-mean logits (iCaRL's classifier, Rebuffi et al. 2017), usable by any method.

    store = PrototypeStore(n_classes, dim, variance=True)
    store.update(features, labels)               # means (and variances) of the classes present, marks them seen
    logits = ncm_logits(features, store.means, metric="cosine", seen=store.seen)
    x_aug, y_aug = store.sample_gaussian(64, classes, radius)   # PASS's prototype augmentation
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory

METRICS = ("euclidean", "sqeuclidean", "cosine")


class PrototypeStore(nn.Module):
    """Per-class prototypes ``means [C, D]``, a ``seen [C]`` mask, optionally ``variance [C]`` (trace of the class
    covariance over D) and ``covariance [C, D, D]``. Ledger category: ``prototypes``."""

    def __init__(self, n_classes: int, dim: int, variance: bool = False, covariance: bool = False):
        super().__init__()
        self.n_classes, self.dim = int(n_classes), int(dim)
        self.register_buffer("means", torch.zeros(self.n_classes, self.dim))
        self.register_buffer("seen", torch.zeros(self.n_classes, dtype=torch.bool))
        self.register_buffer("variance", torch.zeros(self.n_classes) if variance else None)
        self.register_buffer("covariance", torch.zeros(self.n_classes, self.dim, self.dim) if covariance else None)
        tag_memory(self, "prototypes")

    @property
    def seen_classes(self) -> Tensor:
        """Indices of the classes that have a prototype."""
        return self.seen.nonzero().squeeze(1)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Set the prototype (and variance / covariance) of every class in ``labels`` from its ``features``."""
        features = features.detach().flatten(1).to(self.means)
        labels = labels.to(self.means.device)
        for c in labels.unique().tolist():
            f = features[labels == c]
            mean = f.mean(0)
            self.means[c] = mean
            self.seen[c] = True
            if self.variance is not None or self.covariance is not None:
                centred = f - mean
                cov = centred.T @ centred / max(len(f) - 1, 1)  # unbiased, as numpy.cov
                if self.variance is not None:
                    self.variance[c] = cov.diagonal().sum() / self.dim
                if self.covariance is not None:
                    self.covariance[c] = cov

    def sample_gaussian(self, n: int, classes: Tensor, radius: Tensor | float,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pseudo-features of classes drawn uniformly from ``classes``: ``mean_c + radius * N(0, I)``
        (PASS's prototype augmentation); returns (features, labels)."""
        pick = classes[torch.randint(len(classes), (n,), device=classes.device, generator=generator)]
        noise = torch.randn(n, self.dim, device=self.means.device, generator=generator)
        return self.means[pick] + noise * radius, pick


def ncm_logits(features: Tensor, prototypes: Tensor, metric: str = "cosine", seen: Tensor | None = None) -> Tensor:
    """Nearest-class-mean logits: the negative distance of every feature to every prototype.

    ``metric``: ``euclidean`` (``-||f - p||``), ``sqeuclidean`` (``-||f - p||^2``) or ``cosine`` (Euclidean distance
    between L2-normalised features and prototypes, iCaRL's and NAPA-VQ's inference). ``seen`` (a bool mask over
    prototypes) sets the logits of classes without a prototype to ``-inf``."""
    if metric not in METRICS:
        raise ValueError(f"unknown NCM metric '{metric}'; choose one of {', '.join(METRICS)}")
    features = features.flatten(1)
    if metric == "cosine":
        features, prototypes = F.normalize(features, dim=1), F.normalize(prototypes, dim=1)
    dist = torch.cdist(features, prototypes)
    logits = -(dist.pow(2) if metric == "sqeuclidean" else dist)
    if seen is not None:
        logits = logits.masked_fill(~seen.to(logits.device), float("-inf"))
    return logits


@torch.no_grad()
def extract_features(feature_fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 500,
                     transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``feature_fn`` over ``x`` in batches (``transform`` turns stored inputs into network input first)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out.append(feature_fn(transform(xb) if transform is not None else xb).flatten(1))
    return torch.cat(out) if out else x.new_zeros((0, 0), dtype=torch.float32)
