"""Pretrained backbones: clzoo-pretrain -> backbone.pt + card -> model.checkpoint round trip through timm's loader,
the overlap refusal, checkpoint errors naming keys, position-embedding resampling, CNN checkpoints, and prompt
methods learning on a pretrained tiny ViT."""
from __future__ import annotations

import json

import pytest
import torch

from clzoo.models import CheckpointError, SourceOverlapError, TimmBackbone, reduced_resnet18, resnet32
from clzoo.models.pretrained import sha256_file
from clzoo.pretrain import pretrain
from clzoo.testing import tiny_config

VIT = {"_target_": "clzoo.models.TimmBackbone", "name": "vit_tiny_patch16_224", "img_size": "auto",
       "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory):
    """A tiny ViT pretrained on digits 5-9 (the 8x8 bundled digits)."""
    out = tmp_path_factory.mktemp("pretrained")
    cfg = {"model": dict(VIT), "source": {"dataset": "digits", "classes": [5, 6, 7, 8, 9]},
           "augment": {"mean": None, "std": None, "crop_padding": 0, "hflip": False},
           "trainer": {"epochs": 4, "batch_size": 32, "warmup_epochs": 0, "label_smoothing": 0.0, "device": "cpu",
                       "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}},
           "out": str(out), "seed": 0, "resume": True, "data": {}}
    card = pretrain(cfg, show_progress=False)
    return cfg, card, out


def test_pretrain_writes_weights_and_card_and_resumes(pretrained_vit):
    cfg, card, out = pretrained_vit
    assert card["sha256"] == sha256_file(out / "backbone.pt")
    assert json.loads((out / "backbone.json").read_text()) == card
    assert card["source"] == {**card["source"], "dataset": "digits", "classes": [5, 6, 7, 8, 9]}
    assert card["training"]["epochs"] == 4 and len(card["training"]["history"]) == 4
    assert card["accuracy"] > 0.5  # 5 classes: chance is 0.2
    assert card["clzoo_version"] and card["model"]["depth"] == 2
    # the card states the input pipeline the weights were trained with, augmentation included
    assert card["input"] == {**card["input"], "mean": None, "std": None, "crop_padding": 0, "hflip": False,
                             "brightness": 0.0, "image_shape": [1, 8, 8]}
    # a finished run resumes to the same weights without training again
    again = pretrain(dict(cfg), show_progress=False)
    assert again["sha256"] == card["sha256"] and again["training"]["history"] == card["training"]["history"]


def test_checkpoint_round_trip_through_timm(pretrained_vit):
    import timm

    _, card, out = pretrained_vit
    saved = torch.load(out / "backbone.pt", weights_only=True)
    kw = {k: v for k, v in VIT.items() if k not in ("_target_", "name", "img_size")}
    loaded = TimmBackbone((1, 8, 8), "vit_tiny_patch16_224", img_size="auto", checkpoint=str(out / "backbone.pt"), **kw)
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert loaded.card == card
    # timm alone loads the file too (pretrained_cfg_overlay=dict(file=...); custom_load: this tag defaults to .npz)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, in_chans=1, img_size=8,
                            pretrained_cfg_overlay=dict(file=str(out / "backbone.pt"), num_classes=0, custom_load=False),
                            **kw)
    assert torch.equal(net.state_dict()["blocks.1.mlp.fc2.weight"], saved["blocks.1.mlp.fc2.weight"])


def test_pos_embed_resampled_as_timm_does_and_said(pretrained_vit, capsys):
    _, _, out = pretrained_vit
    kw = {k: v for k, v in VIT.items() if k not in ("_target_", "name", "img_size")}
    bigger = TimmBackbone((1, 16, 16), "vit_tiny_patch16_224", img_size="auto", checkpoint=str(out / "backbone.pt"), **kw)
    assert bigger.net.pos_embed.shape == (1, 17, 32)
    assert "position embeddings resampled from (1, 5, 32) to (1, 17, 32)" in capsys.readouterr().out


def test_checkpoint_for_another_architecture_is_one_clear_error(pretrained_vit, tmp_path):
    _, _, out = pretrained_vit
    kw = {k: v for k, v in VIT.items() if k not in ("_target_", "name", "img_size")}
    with pytest.raises(CheckpointError, match=r"does not fit timm model .*shape mismatch: .*blocks\.0"):
        TimmBackbone((1, 8, 8), "vit_tiny_patch16_224", img_size="auto", checkpoint=str(out / "backbone.pt"),
                     **{**kw, "embed_dim": 64})
    with pytest.raises(CheckpointError, match="missing keys: blocks.2"):
        TimmBackbone((1, 8, 8), "vit_tiny_patch16_224", img_size="auto", checkpoint=str(out / "backbone.pt"),
                     **{**kw, "depth": 3})
    path = tmp_path / "resnet32.pt"
    net = resnet32((3, 32, 32))
    torch.save(net.state_dict(), path)
    again = resnet32((3, 32, 32), checkpoint=str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"does not fit reduced_resnet18.*(missing|unexpected) keys"):
        reduced_resnet18((3, 32, 32), nf=4, checkpoint=str(path))
    with pytest.raises(CheckpointError, match="missing keys: blocks.0.*unexpected keys: bn1"):
        TimmBackbone((3, 32, 32), "vit_tiny_patch16_224", img_size="auto", checkpoint=str(path), **kw)
    with pytest.raises(CheckpointError, match="no such file"):
        resnet32((3, 32, 32), checkpoint=str(tmp_path / "absent.pt"))


def test_overlapping_stream_is_refused_unless_allowed_and_prompts_learn(pretrained_vit, tmp_path):
    from clzoo.engine.runner import run

    _, card, out = pretrained_vit
    model = {**VIT, "checkpoint": str(out / "backbone.pt")}
    cfg = tiny_config("l2pp", model=model, pool_size=6, length=4, top_k=2, epochs=2)
    with pytest.raises(SourceOverlapError, match=r"trained on 5 classes of digits .* model.allow_overlap=true"):
        run(cfg, tmp_path / "refused", show_progress=False)
    cfg["model"]["allow_overlap"] = True
    results = run(cfg, tmp_path / "allowed", show_progress=False)
    assert results["backbone"]["allow_overlap"] is True
    assert results["backbone"]["overlap_classes"] == [5, 6, 7, 8, 9] and results["backbone"]["card"] == card
    R = results["acc_matrix_task_il"]
    assert sum(R[i][i] for i in range(5)) / 5 > 0.75  # prompts + head learn on the pretrained backbone
    cfg["stream"]["augment"] = {**cfg["stream"].get("augment", {}), "mean": [0.5], "std": [0.25]}
    with pytest.raises(ValueError, match=r"normalised with mean=null std=null .* set stream.augment.mean=null"):
        run(cfg, tmp_path / "normalised", show_progress=False)


def test_clr_reprograms_a_pretrained_network_from_task_0(tmp_path):
    """With model.checkpoint, CLR freezes the loaded network from the start and gives task 0 CLR layers too."""
    from clzoo.engine.runner import run

    torch.manual_seed(0)
    net = reduced_resnet18((1, 8, 8), nf=4)
    torch.save(net.state_dict(), tmp_path / "backbone.pt")
    model = {"_target_": "clzoo.models.reduced_resnet18", "nf": 4, "checkpoint": str(tmp_path / "backbone.pt")}
    cfg = tiny_config("clr", model=model, epochs=1)
    cfg["trainer"]["max_tasks"] = 2
    run(cfg, tmp_path / "run", show_progress=False)
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("task_*.pt"))[-1], weights_only=False)["method"]
    convs = {k: v for k, v in net.state_dict().items() if k.endswith("conv1.weight") or k.endswith("conv2.weight")}
    for key, value in convs.items():
        ours = state["model.backbone." + key.replace(".weight", ".conv.weight")]
        assert torch.equal(ours, value), key  # the pretrained convolutions never change
    assert any(k.startswith("model.backbone.conv1.reprogram.0.") for k in state)  # task 0 is reprogrammed
