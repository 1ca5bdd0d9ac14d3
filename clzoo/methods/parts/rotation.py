"""Rotation-based self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020; used by PASS, Zhu et al. CVPR
2021, NAPA-VQ, Malepathirana et al. ICCV 2023, and OnPro, Wei et al. ICCV 2023).

Every image is seen at 0, 90, 180 and 270 degrees; rotation ``k`` of class ``y`` is the augmented class ``4y + k``,
so a classifier over ``4C`` joint labels learns the classes and the rotations together. The four copies of a sample
are consecutive (sample-major, as the PASS code stacks them), so ``labels[::4] == 4 * y`` and
``joint // 4 == y``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

N_ROTATIONS = 4


class RotationError(ValueError):
    """Rotation augmentation asked for on inputs that are not square images."""


def check_square_images(input_shape: Sequence[int], who: str = "rotation augmentation") -> None:
    """Raise :class:`RotationError` unless ``input_shape`` is ``(C, H, W)`` with ``H == W`` (a rotation by 90 degrees
    must keep the shape)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise RotationError(f"{who} rotates images by 90 degrees and needs square images (C, H, W) with H == W; "
                            f"this stream's inputs have shape {shape}: choose a stream of square images")


def rotate4(x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``x [B, C, H, W]`` -> ``[4B, C, H, W]`` (each sample at k = 0, 1, 2, 3 quarter turns, consecutive) and
    ``y [B]`` -> joint labels ``4y + k`` (``None`` when ``y`` is None)."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise RotationError(f"rotate4 needs a batch of square images [B, C, H, W] with H == W, got {tuple(x.shape)}")
    out = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(N_ROTATIONS)], 1).flatten(0, 1)
    if y is None:
        return out, None
    return out, joint_labels(y)


def joint_labels(y: Tensor) -> Tensor:
    """``[B]`` class labels -> ``[4B]`` joint labels ``4y + k``, sample-major (matches :func:`rotate4`)."""
    return (y.unsqueeze(1) * N_ROTATIONS + torch.arange(N_ROTATIONS, device=y.device)).flatten()


def class_logits(joint_logits: Tensor) -> Tensor:
    """Logits over ``4C`` joint classes -> logits over the ``C`` classes at rotation 0 (PASS's inference)."""
    return joint_logits[:, ::N_ROTATIONS]
