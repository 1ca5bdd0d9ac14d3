"""A network that grows one specialized block per task on shared generalized blocks (MEMO, DER).

``x -> generalized(x) -> [block_0(.), ..., block_t(.)] concatenated -> head``. The blocks list grows: block t+1
starts as a copy of block t, older blocks are frozen and stay in eval mode. The head is allocated for the largest
feature the stream can need (one block per task) and covers every class, so its shape never changes; the columns of
a block that does not exist yet are zero. An auxiliary head over (new classes + 1) reads the newest block only.

Memory categories: the generalized blocks and the first specialized block are the ``backbone`` a fixed network
would have; every block added later is ``per_task`` (it is kept in addition to the base network, so it is counted
even when ``budget.count_model=false``); both heads are ``heads``.

The number of blocks is part of the state: loading a state dict grows the network to the number of blocks the
state holds before loading, so a checkpoint taken after any task loads into a freshly built network.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from ..memory.ledger import tag_memory


class ExpandableNet(nn.Module):
    def __init__(self, generalized: nn.Module, specialized: nn.Module, feature_dim: int, n_classes: int,
                 max_blocks: int, aux_classes: int):
        super().__init__()
        self.feature_dim, self.max_blocks = int(feature_dim), int(max_blocks)
        self.generalized = tag_memory(generalized, "backbone")
        self.blocks = nn.ModuleList([tag_memory(specialized, "backbone")])
        self.head = tag_memory(nn.Linear(self.feature_dim * self.max_blocks, n_classes), "heads")
        self.aux_head = tag_memory(nn.Linear(self.feature_dim, aux_classes), "heads")
        with torch.no_grad():  # the first block's columns as nn.Linear(feature_dim, n_classes), whatever max_blocks
            self.head.weight[:, self.feature_dim:].zero_()
            self._fresh_columns(0)
            bound = 1 / self.feature_dim ** 0.5
            self.head.bias.uniform_(-bound, bound)
        # also when loaded as a sub-module (a method's state dict): grow before the blocks are loaded
        self.register_load_state_dict_pre_hook(self._grow_before_load)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_features(self) -> int:
        return self.feature_dim * self.n_blocks

    def add_block(self) -> nn.Module:
        """Append a specialized block initialised from the newest one; freeze (and put in eval mode) every older
        block; give the new block's head columns a fresh initialisation."""
        if self.n_blocks >= self.max_blocks:
            raise RuntimeError(f"the network was allocated for {self.max_blocks} blocks (one per task)")
        for block in self.blocks:
            block.requires_grad_(False)
            block.eval()
        block = tag_memory(copy.deepcopy(self.blocks[-1]), "per_task")
        block.requires_grad_(True)
        block.train(self.training)
        self.blocks.append(block)
        with torch.no_grad():
            self._fresh_columns(self.n_blocks - 1)
        return block

    def _fresh_columns(self, index: int) -> None:
        """nn.Linear's own initialisation (fan-in ``feature_dim``) for the head columns of block ``index``."""
        cols = slice(self.feature_dim * index, self.feature_dim * (index + 1))
        fresh = torch.empty(self.head.out_features, self.feature_dim, device=self.head.weight.device)
        nn.init.kaiming_uniform_(fresh, a=5 ** 0.5)
        self.head.weight[:, cols] = fresh

    def reset_aux_head(self) -> None:
        self.aux_head.reset_parameters()

    def features(self, x: Tensor) -> Tensor:
        """The concatenated features of every block (``n_blocks * feature_dim`` columns)."""
        base = self.generalized(x)
        return torch.cat([block(base) for block in self.blocks], dim=1)

    def logits(self, feats: Tensor) -> Tensor:
        return F.linear(feats, self.head.weight[:, :feats.shape[1]], self.head.bias)

    def forward(self, x: Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.logits(feats)
        return (logits, feats) if return_features else logits

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self.blocks[:-1]:  # frozen blocks keep their BatchNorm statistics
            block.eval()
        return self

    @staticmethod
    def _grow_before_load(module, state_dict, prefix, *args) -> None:
        module.grow_to(blocks_in_state(state_dict, prefix))

    def grow_to(self, n_blocks: int) -> None:
        while self.n_blocks < n_blocks:
            self.add_block()


def blocks_in_state(state_dict, prefix: str = "") -> int:
    """How many specialized blocks a state dict of an :class:`ExpandableNet` (under ``prefix``) holds."""
    pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    found = [int(m.group(1)) for key in state_dict for m in [pattern.match(key)] if m]
    return max(found) + 1 if found else 1


def split_for_expansion(backbone: nn.Module, whole: bool = False) -> tuple[nn.Module, nn.Module]:
    """(generalized, specialized) blocks of ``backbone``. ``whole=True`` (DER) makes the whole backbone the
    specialized block and shares nothing; otherwise the backbone must declare its split (``expansion_split``)."""
    if whole:
        return nn.Identity(), backbone
    split = getattr(backbone, "expansion_split", None)
    if split is None:
        raise ValueError(f"{type(backbone).__name__} declares no split into generalized and specialized blocks; MEMO "
                         f"needs one (model=resnet32, resnet8-26, convnet2, reduced resnet18 or mlp with two hidden "
                         f"layers, or a backbone with an expansion_split() method)")
    return split()


__all__ = ["ExpandableNet", "blocks_in_state", "split_for_expansion"]
