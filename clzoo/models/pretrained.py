"""Pretrained backbones: load a local checkpoint, read its card, refuse a stream that overlaps its source.

A backbone trained by ``clzoo-pretrain`` is a pair of files:

* ``backbone.pt``: the backbone's plain state dict (for a timm model: the timm model's own keys without the
  classifier, so ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="backbone.pt"))``
  loads it too);
* ``backbone.json``: its card: model config, source dataset and classes, epochs, accuracy, sha256 of the weights,
  clzoo version.

``model.checkpoint=PATH`` loads such a file, or any plain state dict (or a timm / Hugging Face checkpoint file),
into the backbone. Keys and shapes are checked first, so a checkpoint made for another architecture is one error
naming the keys, never a half-loaded network.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A ``model.checkpoint`` that cannot be loaded into the configured backbone."""


class SourceOverlapError(ValueError):
    """The stream uses classes the pretrained backbone has already been trained on."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(checkpoint: str | Path) -> Path:
    """The card beside a checkpoint: ``backbone.pt`` -> ``backbone.json``."""
    return Path(checkpoint).with_suffix(".json")


def read_card(checkpoint: str | Path) -> dict | None:
    path = card_path(checkpoint)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _resolve(checkpoint) -> Path:
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint={checkpoint}: no such file; give the path of a backbone.pt written by "
                              f"clzoo-pretrain (or any state dict), or model.checkpoint=null for random init")
    return path


def _read_state_dict(path: Path) -> dict:
    from timm.models import load_state_dict  # timm's reader: .pt/.pth/.safetensors, 'state_dict' / 'model' wrappers

    try:
        state = load_state_dict(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"model.checkpoint={path}: cannot read a state dict from it ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.checkpoint={path}: the file does not hold a state dict of tensors")
    return state


def _describe(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(module: nn.Module, state: dict, path, what: str) -> None:
    """One :class:`CheckpointError` naming every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = {k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)}
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"shape mismatch: {_describe(shapes)} (e.g. '{k}' is {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model)")
    raise CheckpointError(f"model.checkpoint={path} does not fit {what}: {'; '.join(parts)}. Use a checkpoint "
                          f"written for this model config (its card, backbone.json, names the config it was made with)")


def load_plain_checkpoint(module: nn.Module, checkpoint, what: str) -> dict | None:
    """Load a plain state dict into ``module`` (strict, checked first); returns the card, if any."""
    path = _resolve(checkpoint)
    state = _read_state_dict(path)
    check_state_dict(module, state, path, what)
    module.load_state_dict(state, strict=True)
    return read_card(path)


def load_timm_checkpoint(net: nn.Module, checkpoint, name: str) -> dict | None:
    """Load a local file into the timm model ``net`` through timm's own path (``load_pretrained`` with the
    ``file`` of a ``pretrained_cfg`` overlay: timm's checkpoint filter adapts the patch embedding and resamples
    the position embeddings to the model's grid). Keys and shapes are checked after timm's filter and before
    loading; the classifier is dropped (the backbone has ``num_classes=0``)."""
    from timm.models import load_pretrained

    path = _resolve(checkpoint)
    state = _read_state_dict(path)
    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    pos_old = state.get("pos_embed")
    filtered = filter_fn(dict(state), net) if filter_fn is not None else dict(state)
    classifier = net.pretrained_cfg.get("classifier", "head")
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    head_keys = {k for k in filtered if any(k in (c + ".weight", c + ".bias") for c in classifier)}
    check_state_dict(net, {k: v for k, v in filtered.items() if k not in head_keys}, path, f"timm model '{name}'")
    own_pos = getattr(net, "pos_embed", None)
    if pos_old is not None and own_pos is not None and tuple(pos_old.shape) != tuple(own_pos.shape):
        print(f"model.checkpoint: position embeddings resampled from {tuple(pos_old.shape)} to "
              f"{tuple(own_pos.shape)} (timm's resample_abs_pos_embed, bicubic: the image size or patch size differs "
              f"from the checkpoint's)", flush=True)
    file_classes = int(state[classifier[0] + ".weight"].shape[0]) if classifier and classifier[0] + ".weight" in state else 0
    # custom_load: the hub default of some tags (augreg .npz); a local torch file loads as a state dict
    cfg = {**net.pretrained_cfg, "file": str(path), "num_classes": file_classes, "custom_load": False}
    for source_key in ("url", "hf_hub_id", "state_dict"):
        cfg.pop(source_key, None)
    load_pretrained(net, pretrained_cfg=cfg, num_classes=0, in_chans=net.patch_embed.proj.in_channels
                    if hasattr(net, "patch_embed") else 3, filter_fn=filter_fn, strict=True)
    return read_card(path)


def attach_card(module: nn.Module, card: dict | None, checkpoint, allow_overlap: bool) -> None:
    """Remember where the weights came from (not state: the checkpoint path is in the config)."""
    module.card = card
    module.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
    module.allow_overlap = bool(allow_overlap)


def check_source_overlap(backbone: nn.Module, stream) -> dict | None:
    """Refuse a stream whose classes overlap the classes the backbone was pretrained on (same dataset), unless
    ``model.allow_overlap=true``. Returns what results.json records about the backbone's provenance."""
    card = getattr(backbone, "card", None)
    checkpoint = getattr(backbone, "checkpoint", None)
    if card is None and checkpoint is None:
        return None
    allow = bool(getattr(backbone, "allow_overlap", False))
    record = {"checkpoint": checkpoint, "card": card, "allow_overlap": allow, "overlap_classes": []}
    if card is None:
        record["note"] = "no card beside the checkpoint: what the backbone was trained on is unknown"
        return record
    source = card.get("source", {})
    dataset = stream.info.get("dataset")
    if source.get("dataset") == dataset:
        overlap = sorted(set(int(c) for c in source.get("classes", [])) & set(int(c) for c in stream.class_order))
        record["overlap_classes"] = overlap
        if overlap and not allow:
            raise SourceOverlapError(
                f"the pretrained backbone {checkpoint} was trained on {len(source.get('classes', []))} classes of "
                f"{dataset} and this stream uses {len(overlap)} of them (dataset labels {_describe(map(str, overlap))}): "
                f"its accuracy would not measure continual learning. Pretrain on a disjoint source (another dataset, "
                f"or the other classes: clzoo-pretrain source.classes=[...]) or set model.allow_overlap=true to run "
                f"anyway (recorded in results.json)")
    return record


def check_input_pipeline(backbone: nn.Module, transform) -> None:
    """A backbone with a card expects the normalisation it was trained with; a stream that normalises otherwise
    is an error (the features would be off without any sign of it)."""
    card = getattr(backbone, "card", None)
    expected = (card or {}).get("input")
    if not expected:
        return
    ours_mean = transform.mean.flatten().tolist() if getattr(transform, "normalize", False) else None
    ours_std = transform.std.flatten().tolist() if getattr(transform, "normalize", False) else None

    def same(a, b):
        return (a is None and b is None) or (a is not None and b is not None and len(a) == len(b)
                                             and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b)))

    if not (same(expected.get("mean"), ours_mean) and same(expected.get("std"), ours_std)):
        def show(v):
            return "null" if v is None else "[" + ",".join(f"{float(x):g}" for x in v) + "]"
        raise ValueError(
            f"the pretrained backbone {getattr(backbone, 'checkpoint', '')} was trained on inputs normalised with "
            f"mean={show(expected.get('mean'))} std={show(expected.get('std'))} (its card), but the stream normalises "
            f"with mean={show(ours_mean)} std={show(ours_std)}; set stream.augment.mean={show(expected.get('mean'))} "
            f"stream.augment.std={show(expected.get('std'))}")
