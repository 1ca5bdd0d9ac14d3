"""``clzoo-pretrain``: train a backbone on a source dataset and class subset; write ``backbone.pt`` and its card.

    clzoo-pretrain model=vit_c32 source.dataset=cifar10 out=pretrained/vit_c32_cifar10

The backbone (any ``model=`` config group option) gets a temporary linear head over the source classes, trained
with cross-entropy (label smoothing), AdamW and a warm-up + cosine schedule. After every epoch the full training
state goes to ``out/pretrain_state.pt``, so an interrupted run continues where it stopped (same configuration).
At the end ``out/backbone.pt`` holds the backbone's plain state dict (the head dropped) and ``out/backbone.json``
its card: model config, source dataset and classes, epochs, test accuracy on the source classes, sha256 of the
weights, the input pipeline, clzoo version. ``model.checkpoint=out/backbone.pt`` then loads it in ``clzoo-run``,
which refuses streams overlapping the card's source classes.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import __version__
from .data import load_source
from .engine.checkpoint import atomic_write_text, config_hash, seed_everything
from .methods.base import build_optimizer
from .models.pretrained import sha256_file

STATE = "pretrain_state.pt"


def _source_subset(source_cfg: dict, root, download: bool, seed: int):
    src = load_source(source_cfg["dataset"], root=root, download=download, path=source_cfg.get("path"))
    classes = source_cfg.get("classes")
    classes = list(range(src.n_classes)) if classes in (None, "all") else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < src.n_classes]
    if bad or not classes:
        raise ValueError(f"source.classes={classes}: {src.name} has labels 0..{src.n_classes - 1}")
    remap = torch.full((src.n_classes,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))

    def pick(x, y, per_class):
        keep = remap[y] >= 0
        x, y = x[keep], remap[y[keep]]
        if per_class:
            gen = torch.Generator().manual_seed(seed)
            idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:per_class]]
                             for c in range(len(classes))])
            x, y = x[idx.sort().values], y[idx.sort().values]
        return x, y

    x_tr, y_tr = pick(src.x_train, src.y_train, source_cfg.get("train_per_class"))
    x_te, y_te = pick(src.x_test, src.y_test, None)
    return src, classes, (x_tr, y_tr, x_te, y_te)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def _accuracy(backbone, head, x, y, transform, device, batch: int = 500) -> float:
    backbone.eval(), head.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = head(backbone(transform(x[i:i + batch].to(device))))
        correct += (logits.argmax(1) == y[i:i + batch].to(device)).sum().item()
    backbone.train(), head.train()
    return correct / max(len(y), 1)


def pretrain(cfg: dict, show_progress: bool = True) -> dict:
    """Train ``cfg['model']`` on ``cfg['source']``; returns the card (also written to ``out/backbone.json``)."""
    from .engine.runner import instantiate, resolve_device, transforms_from_config

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    trainer = cfg["trainer"]
    device = resolve_device(trainer.get("device", "auto"))
    if trainer.get("num_threads"):
        torch.set_num_threads(int(trainer["num_threads"]))
    seed = int(cfg.get("seed", 0))
    model_cfg = dict(cfg["model"])
    if model_cfg.get("checkpoint") not in (None, ""):
        raise ValueError("clzoo-pretrain trains from random init: drop model.checkpoint (or set it to null)")
    data = cfg.get("data", {})
    src, classes, (x_tr, y_tr, x_te, y_te) = _source_subset(cfg["source"], data.get("root"),
                                                            data.get("download", False), seed)
    aug = cfg.get("augment") or {}
    train_tf, eval_tf = transforms_from_config(aug, device)

    seed_everything(seed)
    backbone = instantiate(model_cfg, input_shape=tuple(src.input_shape)).to(device)
    head = nn.Linear(backbone.out_features, len(classes)).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = build_optimizer(params, **dict(trainer.get("optimizer") or {}))
    base_lr = float(trainer["optimizer"]["lr"])
    epochs, bs = int(trainer["epochs"]), int(trainer["batch_size"])
    steps_per_epoch = (len(y_tr) + bs - 1) // bs
    total, warmup = epochs * steps_per_epoch, int(float(trainer.get("warmup_epochs", 0)) * steps_per_epoch)
    smoothing = float(trainer.get("label_smoothing", 0.0))
    chash = config_hash({k: cfg[k] for k in ("model", "source", "augment", "trainer", "seed")})

    history, start = [], 0
    state_path = out / STATE
    if cfg.get("resume", True) and state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=device)
        if state["config_hash"] != chash:
            raise ValueError(f"{state_path} holds a pretraining run of another configuration; use another `out` "
                             f"folder, or resume=false to start this one over")
        backbone.load_state_dict(state["backbone"]), head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
        print(f"resuming {out} after epoch {start}/{epochs}", flush=True)

    x_tr, y_tr = x_tr.to(device), y_tr.to(device)
    backbone.train(), head.train()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(y_tr), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None if show_progress else True, mininterval=1.0, dynamic_ncols=True)
        running = 0.0
        for b in bar:
            step = epoch * steps_per_epoch + b
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, base_lr)
            idx = order[b * bs:(b + 1) * bs]
            loss = F.cross_entropy(head(backbone(train_tf(x_tr[idx]))), y_tr[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            if b % 20 == 0:
                bar.set_postfix(loss=f"{running / (b + 1):.3f}")
        bar.close()
        seconds = time.perf_counter() - t0
        acc = _accuracy(backbone, head, x_te, y_te, eval_tf, device)
        history.append({"epoch": epoch + 1, "loss": running / steps_per_epoch, "test_acc": acc, "seconds": seconds})
        print(f"epoch {epoch + 1}/{epochs}: loss {running / steps_per_epoch:.3f}, source test acc {100 * acc:.2f}%, "
              f"{seconds:.0f}s/epoch", flush=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"backbone": backbone.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1, "config_hash": chash}, tmp)
        tmp.replace(state_path)

    # the backbone's own state dict: for a timm model, the timm model's keys (timm can load the file by itself)
    weights = backbone.net.state_dict() if hasattr(backbone, "net") else backbone.state_dict()
    weights_path = out / "backbone.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, weights_path)
    card = {
        "model": {k: v for k, v in model_cfg.items() if k not in ("checkpoint", "allow_overlap", "pretrained")},
        "source": {"dataset": src.name, "classes": classes, "class_names": [src.class_names[c] for c in classes],
                   "train_images": int(len(y_tr)), "test_images": int(len(y_te)),
                   "train_per_class": cfg["source"].get("train_per_class")},
        "input": {"image_shape": list(src.input_shape), "mean": aug.get("mean"), "std": aug.get("std"),
                  "crop_padding": aug.get("crop_padding", 0), "hflip": aug.get("hflip", False),
                  "brightness": aug.get("brightness", 0.0), "resized_crop": aug.get("resized_crop"),
                  "pixels": "uint8 / 255" + ("" if aug.get("mean") is None else ", then (x - mean) / std")},
        "training": {"epochs": epochs, "batch_size": bs, "optimizer": dict(trainer.get("optimizer") or {}),
                     "warmup_epochs": trainer.get("warmup_epochs", 0), "label_smoothing": smoothing, "seed": seed,
                     "seconds": sum(h["seconds"] for h in history), "history": history},
        "accuracy": history[-1]["test_acc"] if history else None,
        "params": sum(v.numel() for v in weights.values() if v.is_floating_point()),
        "sha256": sha256_file(weights_path),
        "clzoo_version": __version__,
        "torch_version": torch.__version__,
    }
    atomic_write_text(out / "backbone.json", json.dumps(card, indent=1))
    print(f"wrote {weights_path} and {out / 'backbone.json'} (source test acc "
          f"{100 * card['accuracy']:.2f}%, {card['training']['seconds'] / max(len(history), 1):.0f}s per epoch)", flush=True)
    return card


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    from .config import register_resolvers
    from .data import DatasetNotFoundError

    register_resolvers()

    @hydra.main(version_base="1.3", config_path="conf", config_name="pretrain")
    def _main(cfg) -> None:
        container = OmegaConf.to_container(cfg, resolve=True)
        try:
            pretrain(container, show_progress=bool(container.get("log", {}).get("progress", True)))
        except (DatasetNotFoundError, ValueError, KeyError) as err:
            print(f"clzoo-pretrain: error: {err.args[0] if isinstance(err, KeyError) and err.args else err}",
                  file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
