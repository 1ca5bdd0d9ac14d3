"""Batched tensor transforms that run on the run's device: no PIL, no per-sample Python.

:class:`BatchTransform` turns a uint8 batch ``(B, C, H, W)`` into normalised float input, optionally with
random crop after zero padding and random horizontal flip (the usual CIFAR training augmentation), or a random
resized crop (the usual ImageNet one).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def random_crop(x: Tensor, padding: int) -> Tensor:
    """Per-sample random crop of the original size from the zero-padded batch, by index arithmetic."""
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    off_x = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    rows = (off_y + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * padding)
    picked_rows = padded.gather(2, rows)
    cols = (off_x + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return picked_rows.gather(3, cols)


def random_resized_boxes(n: int, h: int, w: int, scale: Sequence[float] = (0.08, 1.0),
                         ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10, device=None) -> Tensor:
    """``n`` boxes ``(left, top, right, bottom)`` in pixels of an ``h`` x ``w`` image, drawn as torchvision's
    ``RandomResizedCrop`` draws one: a fraction of the area from ``scale``, an aspect ratio log-uniform in ``ratio``,
    the first of ``attempts`` draws that fits, else the whole image cut to the nearest allowed ratio, centred."""
    area = torch.empty(n, attempts, device=device).uniform_(float(scale[0]), float(scale[1])) * (h * w)
    aspect = torch.exp(torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    box_w, box_h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first draw that fits
    box_w, box_h, drawn = box_w.gather(1, first).squeeze(1), box_h.gather(1, first).squeeze(1), fits.any(1)
    if w / h < min(ratio):
        whole_w, whole_h = w, round(w / min(ratio))
    elif w / h > max(ratio):
        whole_w, whole_h = round(h * max(ratio)), h
    else:
        whole_w, whole_h = w, h
    box_w = torch.where(drawn, box_w, torch.full_like(box_w, whole_w))
    box_h = torch.where(drawn, box_h, torch.full_like(box_h, whole_h))
    top = torch.where(drawn, (torch.rand(n, device=device) * (h - box_h + 1)).floor(), (h - box_h).div(2).floor())
    left = torch.where(drawn, (torch.rand(n, device=device) * (w - box_w + 1)).floor(), (w - box_w).div(2).floor())
    return torch.stack([left, top, left + box_w, top + box_h], 1)


def random_resized_crop(x: Tensor, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tensor:
    """torchvision's ``RandomResizedCrop`` to the batch's own size, per sample and batched: boxes from
    :func:`random_resized_boxes`, resized back by bilinear interpolation with ``torchvision.ops.roi_align`` (one
    sample per output pixel, at its centre: a box is never larger than the output, so no antialiasing is lost). It
    equals resizing the cropped pixels except within half a source pixel of the box's border, where it blends in the
    pixel beyond the box."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    boxes = random_resized_boxes(b, h, w, scale, ratio, device=x.device).to(x.dtype)
    index = torch.arange(b, device=x.device, dtype=x.dtype).unsqueeze(1)
    return roi_align(x, torch.cat([index, boxes], 1), output_size=(h, w), spatial_scale=1.0, sampling_ratio=1,
                     aligned=True)


def random_hflip(x: Tensor) -> Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_brightness(x: Tensor, amount: float) -> Tensor:
    """Each sample's pixels in [0, 1] scaled by a factor drawn uniformly from [max(0, 1 - amount), 1 + amount], then
    clipped to [0, 1]: torchvision's ``ColorJitter(brightness=amount)``, batched (PyCIL / MEMO / PASS train CIFAR with
    ``amount = 63 / 255``; torchvision rounds the result to uint8 on PIL images, this keeps it in float)."""
    factor = torch.empty(x.shape[0], device=x.device).uniform_(max(0.0, 1.0 - amount), 1.0 + amount)
    return (x * factor.view(-1, *[1] * (x.dim() - 1))).clamp_(0.0, 1.0)


class BatchTransform(nn.Module):
    """uint8 -> float in [0, 1] -> (optional resized crop / crop / flip / brightness) -> (x - mean) / std, all batched.
    ``resized_crop``: the ``scale`` range of :func:`random_resized_crop` (e.g. ``[0.08, 1.0]``), None for none.

    ``channels_last`` (set by ``trainer.channels_last``): image batches come out in the NHWC memory layout."""

    channels_last: bool = False

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 crop_padding: int = 0, hflip: bool = False, brightness: float = 0.0,
                 resized_crop: Sequence[float] | None = None):
        super().__init__()
        self.resized_crop = None if resized_crop is None else tuple(float(v) for v in resized_crop)
        if self.resized_crop is not None and not (len(self.resized_crop) == 2
                                                  and 0 < self.resized_crop[0] <= self.resized_crop[1] <= 1):
            raise ValueError(f"stream.augment.resized_crop must be [min, max] area fractions with 0 < min <= max <= 1 "
                             f"(torchvision's default: [0.08, 1.0]), got {resized_crop}")
        self.crop_padding = int(crop_padding or 0)
        self.hflip = bool(hflip)
        self.brightness = float(brightness or 0.0)
        if self.brightness < 0:
            raise ValueError(f"stream.augment.brightness must be >= 0 (0: off), got {brightness}")
        self.normalize = mean is not None and std is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.brightness > 0 or self.resized_crop is not None

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.resized_crop is not None:
            x = random_resized_crop(x, self.resized_crop)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding)
        if self.hflip:
            x = random_hflip(x)
        if self.brightness:
            x = random_brightness(x, self.brightness)
        if self.normalize:
            x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def converts_like(self, other) -> bool:
        """Whether ``other`` is the same deterministic conversion (no random augmentation in either, the same
        normalisation and layout), so a batch joined from several can be converted in one call."""
        if not isinstance(other, BatchTransform) or self.augments or other.augments \
                or self.normalize != other.normalize or self.channels_last != other.channels_last:
            return False
        return other is self or not self.normalize or (
            torch.equal(self.mean, other.mean) and torch.equal(self.std, other.std))

    def without_augmentation(self) -> "BatchTransform":
        """The same normalisation with no random augmentation (for evaluation)."""
        mean = self.mean.flatten().tolist() if self.normalize else None
        std = self.std.flatten().tolist() if self.normalize else None
        plain = BatchTransform(mean, std).to(self.mean.device if self.normalize else "cpu")
        plain.channels_last = self.channels_last
        return plain
