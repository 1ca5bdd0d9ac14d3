"""Models: a backbone plus a classifier head over the stream's classes."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..memory.ledger import tag_memory
from .backbones import (MLP, ConvNet2, LeNet, PretrainedWeightsError, ResNet, TimmBackbone, cifar_resnet, reduced_resnet18,
                        resnet32)
from .pretrained import CheckpointError, SourceOverlapError
from .prompted_vit import PromptedViT


class ContinualModel(nn.Module):
    """``backbone`` -> features -> ``head`` (a linear layer over every class of the stream).

    The head covers the stream's classes from the start, so state shapes never change and a checkpoint always
    loads; what grows is the set of *active* classes: class-IL prediction uses the classes seen so far and
    task-IL prediction the task's own classes (see :func:`mask_logits`).
    """

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = tag_memory(backbone, "backbone")
        self.head = tag_memory(nn.Linear(backbone.out_features, n_classes), "heads")
        if hasattr(backbone, "init_head"):  # a backbone whose recipe also initialises the classifier (MLP: xavier)
            backbone.init_head(self.head)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor, return_features: bool = False):
        feats = self.backbone(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits


def mask_logits(logits: Tensor, classes) -> Tensor:
    """Keep the logits of ``classes`` (a list, a range or a count of leading classes); the rest become -inf."""
    if isinstance(classes, int):
        classes = range(classes)
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(classes)] = True
    return logits.masked_fill(~keep, float("-inf"))


__all__ = ["ContinualModel", "CheckpointError", "ConvNet2", "cifar_resnet", "LeNet", "MLP", "PretrainedWeightsError",
           "PromptedViT", "ResNet", "SourceOverlapError", "TimmBackbone", "reduced_resnet18", "resnet32", "mask_logits"]
