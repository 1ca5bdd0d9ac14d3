"""L2P: Learning to Prompt, and L2P++ (its prefix-tuning variant from the CODA-Prompt code).

Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister, "Learning to Prompt for Continual Learning", CVPR 2022
(official code: google-research/l2p; PyTorch port JH-LEE-KR/l2p-pytorch). A pool of ``pool_size`` prompts, each
``length`` vectors with one key. The query ``q(x)`` (frozen [CLS]) picks the ``top_k`` prompts whose keys have the
highest cosine with it; the *pull constraint* ``pull_constraint * (1 - cos(q, k_i))`` over the chosen keys draws
keys towards their queries. With ``batchwise=true`` the ``top_k`` prompts chosen most often in the batch are used
for every sample of the batch (training only: at test each sample picks its own, so a prediction never depends
on the other samples of its batch).

* ``mode=prompt_tuning`` (L2P): the chosen prompts are prepended as tokens; the feature is the mean output of
  the prompt tokens (L2P's ``head_type=prompt``); prompts and keys start uniform in [-1, 1).
* ``mode=prefix`` (L2P++, GT-RIPL/CODA-Prompt@6417d4f ``models/zoo.py`` ``L2P``): each chosen prompt is split
  into key / value prefixes at ``layers`` (default: layer 0 only); the feature is the [CLS] output; prompts and
  keys start uniform in [0, 1). The CODA code indexes ``cos_sim[:, k_idx]`` with a (B, k) index, which sums
  every sample's cosine with every other sample's keys; here each sample's own chosen keys are used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parts.prompting import PromptMethod, uniform_
from ..registry import register_method


class PromptPool(nn.Module):
    """``pool_size`` prompts of ``length`` x ``dim`` per layer group, with one key each."""

    def __init__(self, pool_size: int, length: int, dim: int, n_layers: int, low: float, high: float):
        super().__init__()
        self.prompts = uniform_((pool_size, n_layers, length, dim), low, high)
        self.keys = uniform_((pool_size, dim), low, high)


@register_method("l2p")
class L2P(PromptMethod):
    def __init__(self, model, ctx, pool_size: int = 10, length: int = 5, top_k: int = 5,
                 mode: str = "prompt_tuning", layers: list | None = None, pull_constraint: float = 0.5,
                 key_loss: str = "mean", batchwise: bool = True, mask_past: bool = True, lr_schedule: str = "cosine"):
        super().__init__(model, ctx, mask_past, lr_schedule)
        if mode not in ("prompt_tuning", "prefix"):
            raise ValueError(f"{self.method_name}: mode={mode!r}; choose prompt_tuning (L2P) or prefix (L2P++)")
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"{self.method_name}: top_k={top_k} prompts cannot be chosen from a pool of {pool_size}; "
                             f"set method.top_k <= method.pool_size")
        if key_loss not in ("mean", "sum"):
            raise ValueError(f"{self.method_name}: key_loss={key_loss!r}; choose mean (L2P) or sum (the CODA code)")
        self.layers = [0] if layers is None else [int(l) for l in layers]
        if mode == "prefix":
            self.vit.check_prefix_layers(self.layers)
            if length % 2:
                raise ValueError(f"{self.method_name}: prefix prompts are split into key / value halves; length={length} must be even")
        self.mode, self.top_k, self.pull_constraint = mode, top_k, pull_constraint
        self.key_loss, self.batchwise = key_loss, batchwise
        low = -1.0 if mode == "prompt_tuning" else 0.0
        n_layers = len(self.layers) if mode == "prefix" else 1
        self.prompt = self.add_prompts(PromptPool(pool_size, length, self.vit.dim, n_layers, low, 1.0))

    def select(self, q, train: bool):
        """Indices ``(B, top_k)`` of the chosen prompts and their keys' cosines with the query."""
        cos = F.normalize(q, dim=1) @ F.normalize(self.prompt.keys, dim=1).t()  # (B, pool)
        idx = cos.topk(self.top_k, dim=1).indices
        if train and self.batchwise:
            ids, counts = idx.unique(return_counts=True)
            major = ids[counts.topk(min(self.top_k, len(ids))).indices]
            if len(major) < self.top_k:  # fewer distinct prompts than top_k in this batch: keep each sample's own
                major = idx[0]
            idx = major.unsqueeze(0).expand(q.shape[0], -1)
        return idx, cos.gather(1, idx)

    def features(self, x, train, task_id):
        q = self.vit.query(x)
        idx, cos = self.select(q, train)
        P = self.prompt.prompts[idx]                             # (B, k, n_layers, length, D)
        B, k, _, L, D = P.shape
        loss = 0.0
        if train and self.pull_constraint:
            pull = (1.0 - cos).sum(1)
            loss = self.pull_constraint * (pull.mean() if self.key_loss == "mean" else pull.sum())
        if self.mode == "prompt_tuning":
            out = self.vit(x, tokens=P[:, :, 0].reshape(B, k * L, D))
            return out[:, : k * L].mean(1), loss
        half = L // 2
        prefixes = {layer: (P[:, :, j, :half].reshape(B, -1, D), P[:, :, j, half:].reshape(B, -1, D))
                    for j, layer in enumerate(self.layers)}
        return self.vit(x, prefixes=prefixes)[:, 0], loss


@register_method("l2pp")
class L2PP(L2P):
    """L2P++ with the CODA-Prompt code's defaults (pool 30, length 20, top-5, prefix at layer 0, summed key loss)."""

    def __init__(self, model, ctx, pool_size: int = 30, length: int = 20, top_k: int = 5, mode: str = "prefix",
                 layers: list | None = None, pull_constraint: float = 1.0, key_loss: str = "sum",
                 batchwise: bool = False, mask_past: bool = True, lr_schedule: str = "cosine"):
        super().__init__(model, ctx, pool_size, length, top_k, mode, layers, pull_constraint, key_loss, batchwise,
                         mask_past, lr_schedule)
