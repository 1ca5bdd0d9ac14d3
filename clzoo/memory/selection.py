"""Exemplar selection rules computed by a method at the end of a task (the buffer then holds the result).

* :func:`herding` - iCaRL's greedy herding (Welling, ICML 2009; Rebuffi et al., CVPR 2017): pick, one at a
  time, the sample that keeps the mean of the chosen set closest to the class mean.
* :func:`class_balanced_random` - a uniformly random subset with (as nearly as possible) equal counts per
  class, as A-GEM's episodic memory.
"""
from __future__ import annotations

import torch
from torch import Tensor


def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` rows of ``features`` (N x D) chosen by herding, in the order they are chosen.

    Step k picks ``argmin_i || mu - (s + f_i) / k ||`` over rows not yet chosen, where ``mu`` is the mean of all
    rows and ``s`` the sum of the rows chosen so far; so every prefix of the result is a good small
    approximation of the mean, and cutting the exemplar set of a class to its first ``m'`` rows (as iCaRL
    does when memory is shared by more classes) keeps the best ``m'``. Each step is one vectorised pass
    over the candidates. ``features`` are used as given (iCaRL L2-normalises them first).
    """
    n = features.shape[0]
    m = min(int(m), n)
    if m <= 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    feats = features.float()
    mu = feats.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=feats.device)
    chosen = torch.empty(m, dtype=torch.long, device=feats.device)
    inf = torch.tensor(float("inf"), device=feats.device)
    for k in range(m):
        # || mu - (running + f_i) / (k + 1) ||^2 for every candidate i
        cost = ((mu * (k + 1) - running).unsqueeze(0) - feats).pow(2).sum(1)
        cost = torch.where(available, cost, inf)
        i = cost.argmin()
        chosen[k] = i
        running += feats[i]
        available[i] = False
    return chosen


def class_balanced_random(labels: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` distinct indices into ``labels``, drawn uniformly at random within each class, with per-class
    counts as equal as possible (a class with too few samples gives all it has, the others share the rest).

    Vectorised: one random permutation, a stable sort by class, and each sample's rank within its class; the
    samples whose rank is below their class quota are kept.
    """
    n = labels.numel()
    k = min(int(k), n)
    device = labels.device
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    classes, counts = labels.unique(return_counts=True)
    quota = _water_fill(counts.cpu(), k).to(device)
    perm = torch.randperm(n, generator=generator, device="cpu").to(device)
    shuffled = labels[perm]
    order = torch.sort(shuffled, stable=True).indices            # grouped by class, random within class
    cls_idx = torch.searchsorted(classes, shuffled[order])       # class index of every sorted sample
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=device) - starts[cls_idx]
    keep = rank < quota[cls_idx]
    return perm[order[keep]]


def _water_fill(counts: Tensor, k: int) -> Tensor:
    """Per-class quotas summing to ``k``: equal shares, capped by each class's count, leftovers spread evenly
    (ties in the remainder go to the classes listed first)."""
    counts = counts.long()
    quota = torch.zeros_like(counts)
    remaining = k
    while remaining > 0:
        open_ = (quota < counts).nonzero().squeeze(1)
        if len(open_) == 0:
            break
        share = remaining // len(open_)
        if share == 0:
            quota[open_[:remaining]] += 1
            break
        add = torch.minimum(counts[open_] - quota[open_], torch.full_like(open_, share))
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


__all__ = ["herding", "class_balanced_random"]
