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

    def expansion_split(self) -> tuple[nn.Module, nn.Module]:
        """(generalized, specialized) for expansion methods (MEMO): every layer but the last hidden one is shared,
        the last hidden layer (Linear + ReLU) is specialized."""
        if len(self.net) < 5:
            raise ValueError("an MLP needs at least two hidden layers to split into generalized and specialized "
                             "blocks (model.hidden_sizes=[100,100])")
        return nn.Sequential(*self.net[:-2]), nn.Sequential(*self.net[-2:])

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

    def expansion_split(self) -> tuple[nn.Module, nn.Module]:
        """(generalized, specialized) as MEMO splits a ResNet (Zhou et al., ICLR 2023): the stem and every stage but
        the last are shared; the last stage plus pooling is specialized (CIFAR ResNet-32: 112,016 / 351,488
        parameters)."""
        generalized = nn.Sequential(self.conv1, self.bn1, nn.ReLU(), *self.stages[:-1])
        specialized = nn.Sequential(self.stages[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return generalized, specialized


def _with_checkpoint(net: nn.Module, checkpoint, allow_overlap: bool, what: str) -> nn.Module:
    from .pretrained import attach_card, load_plain_checkpoint

    card = load_plain_checkpoint(net, checkpoint, what) if checkpoint not in (None, "") else None
    attach_card(net, card, checkpoint, allow_overlap)
    return net


def reduced_resnet18(input_shape: Sequence[int], nf: int = 20, checkpoint: str | None = None,
                     allow_overlap: bool = False) -> ResNet:
    """Reduced ResNet-18 of GEM (Lopez-Paz & Ranzato, 2017) with ``nf`` base filters (GEM: 20; DER's CIFAR: 64).
    ``checkpoint``: a state dict of this network (e.g. ``backbone.pt`` from ``clzoo-pretrain model=resnet18``)."""
    net = ResNet(input_shape, [nf, 2 * nf, 4 * nf, 8 * nf], [2, 2, 2, 2], shortcut="conv")
    return _with_checkpoint(net, checkpoint, allow_overlap, f"reduced_resnet18 (nf={nf}, input {tuple(input_shape)})")


CONV_INITS = ("default", "he")


def apply_conv_init(net: nn.Module, conv_init: str) -> None:
    """``model.conv_init``: ``default`` keeps PyTorch's initialisation; ``he`` draws every convolution's weights from
    N(0, 2 / (k * k * out_channels)) (He et al., 2015), as PyCIL's and MEMO's CIFAR ResNets do."""
    if conv_init not in CONV_INITS:
        raise ValueError(f"unknown model.conv_init '{conv_init}'; choose one of {', '.join(CONV_INITS)}")
    if conv_init == "he":
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def cifar_resnet(input_shape: Sequence[int], depth: int = 32, checkpoint: str | None = None,
                 allow_overlap: bool = False, conv_init: str = "default") -> ResNet:
    """CIFAR ResNet of ``depth`` = 6n + 2 layers (He et al., 2016; as in PyCIL/MEMO): 16/32/64 filters, n blocks
    per stage, option-A shortcuts. Without the classifier: ResNet-8 74,640, -14 171,856, -20 269,072,
    -26 366,288, -32 463,504 parameters (the backbones of MEMO's memory-AUC protocol). ``conv_init``: see
    :func:`apply_conv_init` (``he`` is PyCIL's / MEMO's; BatchNorm starts at weight 1, bias 0 either way)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 14, 20, 26, 32, 44, 56, ...); got model.depth={depth}")
    n = (depth - 2) // 6
    net = ResNet(input_shape, [16, 32, 64], [n, n, n], shortcut="pad")
    apply_conv_init(net, conv_init)
    return _with_checkpoint(net, checkpoint, allow_overlap, f"CIFAR ResNet-{depth} (input {tuple(input_shape)})")


def resnet32(input_shape: Sequence[int], checkpoint: str | None = None, allow_overlap: bool = False,
             conv_init: str = "default") -> ResNet:
    """CIFAR ResNet-32 (He et al., 2016; as in PyCIL/MEMO): 16/32/64 filters, 5 blocks per stage, option-A
    shortcuts; 463,504 parameters without the classifier. ``checkpoint``: a state dict of this network."""
    return cifar_resnet(input_shape, 32, checkpoint, allow_overlap, conv_init)


class ConvNet2(nn.Module):
    """Two conv blocks (3x3 conv with bias, BatchNorm, ReLU, 2x2 max-pool), 64 channels, global average pooling:
    the smallest backbone of MEMO's CIFAR memory-AUC protocol (38,976 parameters on RGB input)."""

    def __init__(self, input_shape: Sequence[int], width: int = 64, conv_init: str = "default"):
        super().__init__()
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.block1 = block(input_shape[0], width)
        self.block2 = block(width, width)
        self.out_features = width
        apply_conv_init(self, conv_init)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.block2(self.block1(x)), 1).flatten(1)

    def expansion_split(self) -> tuple[nn.Module, nn.Module]:
        """(generalized, specialized) as MEMO splits ConvNet2: the first block shared, the second specialized."""
        return self.block1, nn.Sequential(self.block2, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class PretrainedWeightsError(ValueError):
    """A configuration asks for pretrained weights that cannot be had (no network and not in the cache)."""


class TimmBackbone(nn.Module):
    """Any timm model by name, with its classifier removed (``num_classes=0``).

    ``img_size``: ``None`` passes nothing (CNNs); ``"auto"`` builds the model for the stream's image size
    (``input_shape[1:]``, e.g. 32x32 for CIFAR: ViTs fix their input size at construction); an int or pair is
    passed as is. Other keyword arguments go to ``timm.create_model`` (``patch_size``, ``depth``, ...).

    Weights, three ways, all through timm: ``pretrained=True`` (timm's hub or the Hugging Face cache),
    ``checkpoint=PATH`` (a local file, loaded by timm's ``load_pretrained`` as a ``pretrained_cfg`` ``file``
    overlay, after a key and shape check; position embeddings are resampled by timm when the image or patch grid
    differs), or neither (random init). ``allow_overlap``: run on a stream that shares classes with the
    checkpoint card's source (see :func:`clzoo.models.pretrained.check_source_overlap`). ``resize``: upsample
    every batch (bilinear) to this size before the network, e.g. 32x32 CIFAR to a ViT-B/16's 224x224.
    """

    def __init__(self, input_shape: Sequence[int], name: str, pretrained: bool = False,
                 img_size: int | Sequence[int] | str | None = None, checkpoint: str | None = None,
                 allow_overlap: bool = False, resize: int | None = None, **kwargs):
        super().__init__()
        import timm

        from .pretrained import attach_card, load_timm_checkpoint

        if pretrained and checkpoint not in (None, ""):
            raise ValueError("model.pretrained=true and model.checkpoint=PATH both ask for weights; choose one "
                             "(the hub's weights, or the local file)")
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
        card = load_timm_checkpoint(self.net, checkpoint, name) if checkpoint not in (None, "") else None
        attach_card(self, card, checkpoint, allow_overlap)
        self.resize = None if resize in (None, "") else int(resize)
        self.out_features = self.net.num_features

    def prepare(self, x):
        """The network's input: ``x`` upsampled to ``resize`` when set."""
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def forward(self, x):
        return self.net(self.prepare(x))
