"""Supervised contrastive losses, shared by the methods that use them.

1. Supervised contrastive loss (Khosla et al., NeurIPS 2020), as PRD (Asadi et al., ICML 2023) uses it.

``supcon_loss(z, y)`` takes L2-normalised projections of ``V`` views ``z [B, V, D]`` and labels ``y [B]``; every
one of the ``B*V`` views is an anchor whose positives are the other views of its class:

    L = -(tau / tau_base) * mean_anchors mean_{p in P(a)} log( exp(z_a.z_p / tau) / sum_{k != a} exp(z_a.z_k / tau) )

2. Supervised contrastive (NT-Xent) losses on a precomputed similarity matrix, as OCM defines them (Guo, Liu & Zhao,
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


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.1, base_temperature: float = 0.07) -> Tensor:
    if z.dim() != 3:
        raise ValueError(f"supcon_loss needs projections [batch, views, dim], got shape {tuple(z.shape)}")
    b, v = z.shape[:2]
    feats = z.transpose(0, 1).reshape(b * v, -1)                      # view-major, as torch.cat(unbind(z, 1))
    y = labels.repeat(v)
    sim = feats @ feats.T / temperature
    sim = sim - sim.max(1, keepdim=True).values.detach()              # numerical stability
    not_self = ~torch.eye(b * v, dtype=torch.bool, device=z.device)
    positive = (y.unsqueeze(0) == y.unsqueeze(1)) & not_self
    log_prob = sim - torch.logsumexp(sim.masked_fill(~not_self, float("-inf")), 1, keepdim=True)
    mean_pos = (log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
    return -(temperature / base_temperature) * mean_pos.mean()


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
