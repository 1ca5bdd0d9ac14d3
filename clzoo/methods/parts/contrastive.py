"""Supervised contrastive (NT-Xent) losses on a precomputed similarity matrix, as OCM defines them (Guo, Liu & Zhao,
ICML 2022; used by OnPro for its instance-wise loss).

The matrix ``S`` is ``2N x 2N`` over two views of N samples (rows ``0..N-1`` view 1, ``N..2N-1`` view 2), with
labels ``y`` of the N samples. With ``P = softmax(S / tau)`` row-wise (over all columns but the row itself for
:func:`sup_nt_xent`, over all columns for :func:`sup_nt_xent_uniform`) and ``L = -log P``:

* ``sup_nt_xent`` = mean over the 2N rows of ``L[i, pair(i)]`` (the other view of the same sample) + mean over rows of
  the average ``L`` over the row's same-label columns, times 2;
* ``sup_nt_xent_uniform`` = the second term alone, without the factor 2.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8


def _neg_log_probs(sim: Tensor, temperature: float, exclude_self: bool) -> Tensor:
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    expd = torch.exp(sim / temperature)
    if exclude_self:
        expd = expd * ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    return -torch.log(expd / (expd.sum(1, keepdim=True) + EPS) + EPS)


def _label_average(neg_log: Tensor, labels: Tensor) -> Tensor:
    both = labels.repeat(2).view(-1, 1)
    same = (both == both.t()).float()
    same = same / (same.sum(1, keepdim=True) + EPS)
    return (same * neg_log).sum() / len(neg_log)


def sup_nt_xent(sim: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    neg_log = _neg_log_probs(sim, temperature, exclude_self=True)
    n = len(sim) // 2
    pairs = (neg_log[:n, n:].diagonal().sum() + neg_log[n:, :n].diagonal().sum()) / (2 * n)
    return pairs + 2 * _label_average(neg_log, labels)


def sup_nt_xent_uniform(sim: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    return _label_average(_neg_log_probs(sim, temperature, exclude_self=False), labels)
