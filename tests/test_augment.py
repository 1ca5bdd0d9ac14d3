"""Batched augmentation (clzoo.data.augment): random crop after zero padding, horizontal flip, normalisation."""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from clzoo.data.augment import BatchTransform, random_crop, random_hflip

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2615]


def _images(n: int, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=g)  # no zeros: padding stays visible


def _window_offsets(out: torch.Tensor, x: torch.Tensor, p: int) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) of the window of the zero-padded input it equals (fails if none)."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    found = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert hits, f"sample {i} is not a window of its zero-padded input"
        found.append(hits[0])
    return found


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_is_a_shifted_window_of_the_zero_padded_input(dtype):
    torch.manual_seed(0)
    p = 2
    x = _images(400).to(dtype)
    out = random_crop(x, p)
    assert out.shape == x.shape and out.dtype == dtype
    offsets = _window_offsets(out, x, p)
    # every shift in [0, 2p] x [0, 2p] occurs (including the extremes, which show the zero border)
    assert set(offsets) == {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    # channels of one sample share one shift: checked by comparing whole (C, H, W) windows above


def test_crop_in_the_transform_pads_with_zeros_before_normalising():
    torch.manual_seed(1)
    x = _images(200, h=6, w=6)
    out = BatchTransform(crop_padding=3)(x)  # no normalisation: output = cropped x / 255
    assert out.dtype == torch.float32
    _window_offsets((out * 255).round().to(torch.uint8), x, 3)
    assert (out == 0).any(), "shifted windows must show the zero padding"


def test_hflip_flips_about_half_and_only_flips():
    torch.manual_seed(0)
    x = _images(2000, h=4, w=5)
    out = random_hflip(x)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all()
    assert not (same & flipped).any()  # no image here is left-right symmetric
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_normalisation_matches_torchvision_normalize():
    from torchvision.transforms import Normalize

    x = _images(16, h=32, w=32)
    ours = BatchTransform(MEAN, STD)(x)
    reference = Normalize(MEAN, STD)(x.float() / 255.0)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)
    # evaluation transform: same normalisation, no randomness
    train = BatchTransform(MEAN, STD, crop_padding=4, hflip=True)
    evaluate = train.without_augmentation()
    assert not evaluate.augments and torch.equal(evaluate(x), ours)
    # float input in [0, 1] is taken as already scaled
    assert torch.allclose(BatchTransform(MEAN, STD)(x.float() / 255.0), reference, atol=1e-6, rtol=0)


def test_full_cifar_transform_on_uint8():
    torch.manual_seed(0)
    x = _images(64, h=32, w=32)
    out = BatchTransform(MEAN, STD, crop_padding=4, hflip=True)(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    # undo the normalisation: each sample is a (possibly flipped) window of its zero-padded input
    raw = (out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    raw = raw.round().clamp(0, 255).to(torch.uint8)
    flipped_back = raw.flip(-1)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(raw[i], w) or torch.equal(flipped_back[i], w) for w in windows), i


class _CountTorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _calls(transform, batch: int) -> int:
    x = _images(batch, h=32, w=32)
    with _CountTorchCalls() as counter:
        transform(x)
    return counter.calls


def test_no_per_sample_python():
    """The work is batched: the number of torch calls does not grow with the batch size."""
    transform = BatchTransform(MEAN, STD, crop_padding=4, hflip=True)
    small, large = _calls(transform, 2), _calls(transform, 512)
    assert small == large and small < 100


def test_brightness_scales_each_sample_within_the_range_and_clips_like_colorjitter():
    """``augment.brightness`` is torchvision's ColorJitter(brightness=b), batched: one factor per sample from
    [1 - b, 1 + b], result clipped to [0, 1]; with b = 0 nothing is drawn (runs without it are unchanged)."""
    from torchvision.transforms import ColorJitter

    from clzoo.data.augment import random_brightness

    torch.manual_seed(0)
    x = torch.rand(500, 3, 6, 6) * 0.5 + 0.25  # nothing clipped below 1.5x, so factors can be read back
    out = random_brightness(x, 63 / 255)
    factors = (out / x).flatten(1)
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), atol=1e-5)  # one factor per sample
    f = factors[:, 0]
    assert f.min() >= 1 - 63 / 255 - 1e-6 and f.max() <= 1 + 63 / 255 + 1e-6
    assert f.std() > 0.1  # spread over the range (uniform on [0.753, 1.247]: std 0.143)
    bright = random_brightness(torch.full((4, 3, 2, 2), 0.9), 0.9)
    assert bright.max() <= 1.0 and bright.min() >= 0.0
    # torchvision on the same factor: adjust_brightness of a float image is the clipped product
    jitter = ColorJitter(brightness=(1.2, 1.2))
    assert torch.allclose(jitter(x[0]), (x[0] * 1.2).clamp(0, 1))

    plain, with_b = BatchTransform(MEAN, STD), BatchTransform(MEAN, STD, brightness=63 / 255)
    assert not plain.augments and with_b.augments
    imgs = _images(8)
    state = torch.get_rng_state()
    plain(imgs)
    assert torch.equal(torch.get_rng_state(), state)  # brightness 0: no random draw
    with pytest.raises(ValueError, match="brightness"):
        BatchTransform(brightness=-0.1)


def test_resized_crop_boxes_follow_torchvisions_draw():
    """Boxes lie in the image with their area in ``scale`` and their aspect ratio in ``ratio`` (up to rounding to
    whole pixels), spread over the range; a draw that can never fit falls back to torchvision's centred box."""
    from clzoo.data.augment import random_resized_boxes

    torch.manual_seed(0)
    h, w = 40, 60
    boxes = random_resized_boxes(4000, h, w, (0.08, 1.0), (3 / 4, 4 / 3))
    left, top, right, bottom = boxes.unbind(1)
    bw, bh = right - left, bottom - top
    assert (left >= 0).all() and (top >= 0).all() and (right <= w).all() and (bottom <= h).all()
    assert torch.equal(boxes, boxes.round()) and (bw >= 1).all() and (bh >= 1).all()
    frac, aspect = bw * bh / (h * w), bw / bh
    assert frac.min() > 0.06 and frac.max() <= 1.0 and aspect.min() > 0.7 and aspect.max() < 1.42
    # the same distribution as torchvision's own draw (means and spreads of 4,000 boxes each)
    from torchvision.transforms import RandomResizedCrop

    tv = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])[2:]
                       for _ in range(4000)], dtype=torch.float)
    tv_frac, tv_aspect = tv[:, 0] * tv[:, 1] / (h * w), tv[:, 1] / tv[:, 0]
    assert abs(frac.mean() - tv_frac.mean()) < 0.02 and abs(frac.std() - tv_frac.std()) < 0.02
    assert abs(aspect.mean() - tv_aspect.mean()) < 0.02
    # ratio 2-3 on a square image at full area never fits: the whole width, cut to ratio 2, centred
    fallback = random_resized_boxes(5, 30, 30, (1.0, 1.0), (2.0, 3.0))
    assert fallback.tolist() == [[0.0, 7.0, 30.0, 22.0]] * 5


def test_resized_crop_is_the_bilinear_resize_of_the_box():
    """Each output is its box's pixels resized to the input size (bilinear, align_corners=False), away from the
    box's border; a box covering the whole image returns the image."""
    from clzoo.data.augment import random_resized_boxes

    torch.manual_seed(1)
    x = torch.rand(6, 3, 24, 32)
    state = torch.get_rng_state()
    boxes = random_resized_boxes(6, 24, 32, (0.2, 0.6))
    torch.set_rng_state(state)
    out = BatchTransform(resized_crop=[0.2, 0.6])(x)
    assert out.shape == x.shape
    for i, (left, top, right, bottom) in enumerate(boxes.int().tolist()):
        ref = torch.nn.functional.interpolate(x[i:i + 1, :, top:bottom, left:right], size=(24, 32), mode="bilinear",
                                              align_corners=False)[0]
        my = -(-24 // (bottom - top)) + 1  # output rows within half a source pixel of the border
        mx = -(-32 // (right - left)) + 1
        assert torch.allclose(out[i, :, my:-my, mx:-mx], ref[:, my:-my, mx:-mx], atol=1e-5)
    whole = BatchTransform(resized_crop=[1.0, 1.0])
    square = torch.rand(3, 3, 16, 16)
    assert torch.allclose(whole(square), square, atol=1e-6)  # area 1 at ratio 1: the image itself
    assert whole.augments and not whole.without_augmentation().augments
    with pytest.raises(ValueError, match="resized_crop"):
        BatchTransform(resized_crop=[0.5, 0.2])
