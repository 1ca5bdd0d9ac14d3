"""Augmented views for contrastive and self-supervised losses, batched on the run's device.

* :func:`rotation_views` - OCM's rotation augmentation (Guo, Liu & Zhao, "Online Continual Learning through Mutual
  Information Maximization", ICML 2022; reused by OnPro): 16 views of each image, the 4 "inner" variants (each half
  of the image, left or right, turned by 180 degrees or not) under the 4 rotations by 90 degrees. View ``i`` of a
  sample of class ``y`` is labelled ``y + n_classes * i``. ``n_views=4`` keeps only the 4 rotations (a cheaper
  setting for CPU runs). Needs square images of even width.
* :class:`ViewAugment` - SimCLR-style random views: horizontal flip, random grayscale, random resized crop (the
  view transform of OCM and OnPro), one affine ``grid_sample`` per batch, no per-sample Python.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROTATION_VIEWS = (4, 16)


def check_rotatable(input_shape: Sequence[int], n_views: int, who: str = "rotation views") -> None:
    """Raise a clear error when ``input_shape`` (C, H, W) cannot be rotated into ``n_views`` views."""
    if n_views not in ROTATION_VIEWS:
        raise ValueError(f"{who}: n_views must be one of {ROTATION_VIEWS}, got {n_views}")
    if len(input_shape) != 3:
        raise ValueError(f"{who}: needs images (C, H, W), got input shape {tuple(input_shape)}")
    _, h, w = input_shape
    if h != w:
        raise ValueError(f"{who}: rotations by 90 degrees need square images, got {h}x{w}")
    if n_views == 16 and w % 2:
        raise ValueError(f"{who}: the 16 OCM views turn each half of the image, which needs an even width, got "
                         f"{h}x{w}; use n_views=4 (rotations only)")


def inner_flips(x: Tensor) -> Tensor:
    """The 4 inner variants of OCM, stacked along the batch: x, (left half turned), (both halves turned),
    (right half turned)."""
    w = x.shape[-1]
    left, right = x[..., : w // 2], x[..., w // 2:]
    left_t, right_t = left.flip(-2, -1), right.flip(-2, -1)
    return torch.cat([x, torch.cat([left_t, right], -1), torch.cat([left_t, right_t], -1),
                      torch.cat([left, right_t], -1)])


def rotation_views(x: Tensor, n_views: int = 16) -> Tensor:
    """``[n_views * B, C, H, W]``: view blocks in OCM's order (rotation 0, 180, 90, 270 degrees, each over the
    inner variants when ``n_views=16``)."""
    base = inner_flips(x) if n_views == 16 else x
    return torch.cat([base, torch.rot90(base, 2, (2, 3)), torch.rot90(base, 1, (2, 3)), torch.rot90(base, 3, (2, 3))])


def view_labels(y: Tensor, n_views: int, n_classes: int) -> Tensor:
    """Labels of :func:`rotation_views`: view ``i`` of class ``y`` is ``y + n_classes * i``."""
    return torch.cat([y + n_classes * i for i in range(n_views)])


class ViewAugment(nn.Module):
    """Random horizontal flip (p 0.5), random grayscale (``gray_p``), random resized crop (area ``scale``, aspect
    ``ratio``) back to the input size. Works on network input (float, any normalisation)."""

    def __init__(self, gray_p: float = 0.25, scale: Sequence[float] = (0.3, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.gray_p, self.scale, self.ratio = gray_p, tuple(scale), tuple(ratio)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        dev = x.device
        flip = torch.rand(b, device=dev) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if c == 3 and self.gray_p > 0:
            gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
            x = torch.where((torch.rand(b, device=dev) < self.gray_p).view(-1, 1, 1, 1), gray, x)
        area = torch.empty(b, device=dev).uniform_(*self.scale)
        log_ratio = torch.empty(b, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
