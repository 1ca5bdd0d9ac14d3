"""Backbones: output shapes, ResNet-32's size and MEMO's "603 exemplars" through the ledger, a tiny timm ViT."""
from __future__ import annotations

import pytest
import torch

from clzoo.memory.ledger import measure
from clzoo.models import MLP, ContinualModel, PretrainedWeightsError, TimmBackbone, reduced_resnet18, resnet32

SHAPES = [(1, 8, 8), (3, 32, 32)]
CIFAR_IMAGE_BYTES = 32 * 32 * 3  # one uint8 CIFAR exemplar, as MEMO counts it


def _tiny_vit(shape, **kwargs):
    return TimmBackbone(shape, "vit_tiny_patch16_224", pretrained=False, img_size="auto",
                        patch_size=shape[-1] // 4, depth=2, **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("build, width", [
    (lambda s: MLP(s), 100),
    (lambda s: reduced_resnet18(s), 160),       # 8 * nf, nf = 20
    (lambda s: reduced_resnet18(s, nf=4), 32),
    (lambda s: resnet32(s), 64),
    (_tiny_vit, 192),                            # ViT-Tiny embedding width
], ids=["mlp", "reduced_resnet18", "reduced_resnet18_nf4", "resnet32", "vit_tiny"])
def test_backbone_output_shapes(build, width, shape):
    torch.manual_seed(0)
    net = build(shape)
    assert net.out_features == width
    model = ContinualModel(net, 10).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(3, *shape), return_features=True)
    assert feats.shape == (3, width) and logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_resnet32_has_463504_parameters():
    net = resnet32((3, 32, 32))
    assert sum(p.numel() for p in net.parameters()) == 463_504
    # option-A shortcuts carry no parameters: every weight tensor is a 3x3 conv kernel
    assert all(p.shape[-2:] == (3, 3) for p in net.parameters() if p.dim() == 4)


def test_memo_603_exemplars_through_the_ledger():
    """MEMO (Zhou et al., ICLR 2023): a ResNet-32 costs 463,504 x 4 bytes = 1,854,016 B = 603 CIFAR images
    (of 3,072 uint8 bytes) + a remainder. MEMO counts parameters only; the ledger counts the whole state, so its
    backbone entry also holds the BatchNorm running statistics (kept, hence paid for)."""
    model = ContinualModel(resnet32((3, 32, 32)), 100)
    ledger = measure(model)
    params = dict(model.named_parameters())
    backbone = {k: b for k, b in ledger.by_tensor.items() if k.startswith("backbone.")}
    param_bytes = sum(b for k, b in backbone.items() if k in params)
    assert param_bytes == 463_504 * 4 == 1_854_016
    assert param_bytes // CIFAR_IMAGE_BYTES == 603 and param_bytes % CIFAR_IMAGE_BYTES == 1_600
    # 31 BatchNorms over 1,136 channels: running mean + var (fp32) and an int64 batch counter each
    bn_state = sum(b for k, b in backbone.items() if k not in params)
    assert bn_state == 2 * 1_136 * 4 + 31 * 8 == 9_336
    assert ledger.by_category["backbone"] == 1_854_016 + 9_336
    assert ledger.by_category["heads"] == (64 * 100 + 100) * 4  # MEMO leaves the FC out; the ledger files it apart
    assert ledger.budgeted_bytes == 0  # count_model=false: the model is not charged to the budget
    assert measure(model, count_model=True).budgeted_bytes == ledger.total_bytes


def _write_cifar_like_folder(root, n_train: int = 4, n_test: int = 2):
    """A CIFAR-shaped image folder (10 classes of random 3x32x32 PNGs), so the test needs no dataset."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(10):
            folder = root / "tiny_cifar" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g), str(folder / f"{i}.png"))
    return root / "tiny_cifar"


def test_model_vit_trains_a_step_on_cifar_shaped_input(tmp_path):
    from clzoo.config import compose
    from clzoo.engine.checkpoint import latest_checkpoint, load_checkpoint, seed_everything
    from clzoo.engine.runner import build_model, build_stream_from_config, run

    folder = _write_cifar_like_folder(tmp_path)
    cfg = compose(["stream=split_cifar10", "stream.dataset=imagefolder", f"stream.path={folder}",
                   f"data.root={tmp_path}", "model=vit", "model.patch_size=8", "+model.depth=2", "method=finetune",
                   "trainer.max_tasks=1", "trainer.device=cpu", "trainer.eval_batch_size=20",
                   "log.progress=false", "log.tensorboard=false", "log.plots=false"])
    assert cfg["model"]["img_size"] == "auto" and cfg["stream"]["augment"]["crop_padding"] == 4
    results = run(cfg, tmp_path / "run", show_progress=False)
    assert results["completed_tasks"] == 1 and results["stream"]["train_sizes"][0] == 8  # one batch of 10
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))["method"]
    assert state["model.backbone.net.pos_embed"].shape == (1, 1 + 4 * 4, 192)  # built for 32x32, patches of 8
    seed_everything(cfg["seed"])
    initial = build_model(cfg["model"], build_stream_from_config(cfg)).state_dict()
    assert not torch.equal(initial["backbone.net.patch_embed.proj.weight"],
                           state["model.backbone.net.patch_embed.proj.weight"])  # the step moved the weights


def test_pretrained_weights_offline_give_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    # force the offline condition (and an empty cache) whether or not this machine has a network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsError) as info:
        TimmBackbone((3, 32, 32), "vit_tiny_patch16_224", pretrained=True, img_size="auto")
    message = str(info.value)
    assert "vit_tiny_patch16_224" in message and "model.pretrained=false" in message and "HF_HOME" in message
    assert isinstance(info.value, ValueError)  # a configuration error: clzoo-run reports it without a traceback


def test_cifar_resnet_he_init_draws_convolutions_like_pycil_and_default_is_unchanged():
    """``model.conv_init=he``: N(0, 2 / (k * k * out_channels)) convolution weights (PyCIL / MEMO's CIFAR ResNets);
    the default leaves PyTorch's initialisation, bit for bit as before the option existed."""
    import math

    from clzoo.models import cifar_resnet

    torch.manual_seed(0)
    he = cifar_resnet((3, 32, 32), 20, conv_init="he")
    convs = [m for m in he.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        k, out = conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels
        assert abs(conv.weight.std().item() / math.sqrt(2.0 / (k * out)) - 1) < 0.15
    torch.manual_seed(0)
    default = cifar_resnet((3, 32, 32), 20)
    torch.manual_seed(0)
    again = cifar_resnet((3, 32, 32), 20, conv_init="default")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(convs[-1].weight, [m for m in default.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight)
    with pytest.raises(ValueError, match="conv_init"):
        cifar_resnet((3, 32, 32), 20, conv_init="xavier")
