"""Backbones: feature extractors with an ``out_features`` attribute. The classifier head lives in
:class:`clzoo.models.ContinualModel`, so every backbone serves class-, task- and domain-IL alike."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


class MLP(nn.Module):
    """Fully connected ReLU network on flattened input (the DER paper's MNIST net is ``hidden_sizes=[100, 100]``)."""

    def __init__(self, input_shape: Sequence[int], hidden_sizes: Sequence[int] = (100, 100), init: str = "xavier"):
        super().__init__()
        if init not in ("default", "xavier"):
            raise ValueError(f"unknown MLP init '{init}'; choose default (PyTorch's) or xavier (mammoth's MNIST MLP)")
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width
        self.init = init
        for layer in self.net:
            self.init_head(layer)

    def init_head(self, layer: nn.Module) -> None:
        """``xavier``: Xavier-uniform weights and zero biases, as the DER paper's MNIST network (mammoth initialises
        every linear layer so, the classifier too); ``default`` keeps PyTorch's initialisation."""
        if self.init == "xavier" and isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.net(x)


class LeNet(nn.Module):
    """A small conv net (LeNet-5 style, as the hypernetwork papers' conv target networks): two 5x5 convolutions
    (``channels``, zero padding 2) each followed by ReLU and 2x2 max-pooling, then a ReLU layer of ``hidden`` units."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (20, 50), hidden: int = 500):
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            else:  # option A of He et al. (CIFAR ResNets): subsample and zero-pad channels, no parameters
                self.shortcut = _PadShortcut(planes - in_planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class ResNet(nn.Module):
    """ResNet for small images: 3x3 stem, no max-pool, global average pooling."""

    def __init__(self, input_shape: Sequence[int], widths: Sequence[int], blocks: Sequence[int], shortcut: str):
        super().__init__()
        in_ch = input_shape[0]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, planes = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n):
                layers.append(BasicBlock(planes, width, stride if b == 0 else 1, shortcut))
                planes = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_features = planes

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def reduced_resnet18(input_shape: Sequence[int], nf: int = 20) -> ResNet:
    """Reduced ResNet-18 of GEM (Lopez-Paz & Ranzato, 2017) with ``nf`` base filters (GEM: 20; DER's CIFAR: 64)."""
    return ResNet(input_shape, [nf, 2 * nf, 4 * nf, 8 * nf], [2, 2, 2, 2], shortcut="conv")


def resnet32(input_shape: Sequence[int]) -> ResNet:
    """CIFAR ResNet-32 (He et al., 2016; as in PyCIL/MEMO): 16/32/64 filters, 5 blocks per stage, option-A
    shortcuts; 463,504 parameters without the classifier."""
    return ResNet(input_shape, [16, 32, 64], [5, 5, 5], shortcut="pad")


class PretrainedWeightsError(ValueError):
    """A configuration asks for pretrained weights that cannot be had (no network and not in the cache)."""


class TimmBackbone(nn.Module):
    """Any timm model by name, with its classifier removed (``num_classes=0``).

    ``img_size``: ``None`` passes nothing (CNNs); ``"auto"`` builds the model for the stream's image size
    (``input_shape[1:]``, e.g. 32x32 for CIFAR: ViTs fix their input size at construction); an int or pair is
    passed as is. Other keyword arguments go to ``timm.create_model`` (``patch_size``, ``depth``, ...).
    """

    def __init__(self, input_shape: Sequence[int], name: str, pretrained: bool = False,
                 img_size: int | Sequence[int] | str | None = None, **kwargs):
        super().__init__()
        import timm

        if img_size == "auto":
            img_size = tuple(int(s) for s in input_shape[1:])
        if img_size is not None:
            kwargs["img_size"] = tuple(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
        try:
            self.net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=input_shape[0], **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(f"timm has no model '{name}'; list them with timm.list_models('*vit*')") from err
            raise
        except OSError as err:  # weights neither cached nor downloadable (no network, or HF_HUB_OFFLINE=1)
            raise PretrainedWeightsError(
                f"cannot load pretrained weights for timm model '{name}': they are not in the Hugging Face cache "
                f"and cannot be downloaded ({err.__class__.__name__}). Fix: set model.pretrained=false to train it "
                f"from scratch, or put the weights in the cache (HF_HOME, e.g. by running once with network access: "
                f"timm.create_model('{name}', pretrained=True)); set HF_HUB_OFFLINE=1 to fail fast without network"
            ) from err
        self.out_features = self.net.num_features

    def forward(self, x):
        return self.net(x)
