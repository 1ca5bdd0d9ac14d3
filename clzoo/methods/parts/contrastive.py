"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), as PRD (Asadi et al., ICML 2023) uses it.

``supcon_loss(z, y)`` takes L2-normalised projections of ``V`` views ``z [B, V, D]`` and labels ``y [B]``; every
one of the ``B*V`` views is an anchor whose positives are the other views of its class:

    L = -(tau / tau_base) * mean_anchors mean_{p in P(a)} log( exp(z_a.z_p / tau) / sum_{k != a} exp(z_a.z_k / tau) )
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
