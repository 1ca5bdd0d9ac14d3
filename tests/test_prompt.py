"""Prompt family on a frozen timm ViT: parameter counts at the official ViT-B/16 defaults, the prefix injection
against timm's attention, Gram-Schmidt, frozen components and backbone, the past-class mask, bad inputs.
(Resume after kill for every prompt method: the conformance kit in test_registry.py, on a tiny ViT.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clzoo.memory.ledger import measure
from clzoo.methods.base import RunContext, StreamInfo
from clzoo.methods.prompt.coda_prompt import CodaPrompt, attended_cosines, gram_schmidt_rows
from clzoo.methods.prompt.dualprompt import DualPrompt
from clzoo.methods.prompt.frozen_head import HeadFinetune
from clzoo.methods.prompt.l2p import L2P, L2PP
from clzoo.models import MLP, ContinualModel, PromptedViT, TimmBackbone
from clzoo.models.prompted_vit import prefixed_block

TINY_VIT = {"_target_": "clzoo.models.TimmBackbone", "name": "vit_tiny_patch16_224", "img_size": "auto",
            "patch_size": 4, "depth": 5, "embed_dim": 32, "num_heads": 2}


def _ctx(n_tasks=5, n_classes=10, shape=(1, 8, 8), lr=0.05):
    per = n_classes // n_tasks
    info = StreamInfo(n_tasks, n_classes, shape, [list(range(t * per, (t + 1) * per)) for t in range(n_tasks)])
    return RunContext(info, optimizer={"name": "sgd", "lr": lr}, batch_size=8, epochs=1)


def _tiny_model(shape=(1, 8, 8), n_classes=10, seed=0):
    torch.manual_seed(seed)
    kw = {k: v for k, v in TINY_VIT.items() if k not in ("_target_", "name", "img_size")}
    return ContinualModel(TimmBackbone(shape, "vit_tiny_patch16_224", img_size="auto", **kw), n_classes)


class _Task:
    def __init__(self, id, n_train=16):
        self.id, self.n_train = id, n_train
        self.x_train, self.y_train = torch.zeros(n_train, 1, 8, 8), torch.zeros(n_train, dtype=torch.long)


def test_trainable_parameter_counts_at_the_official_vit_b16_defaults():
    """GT-RIPL/CODA-Prompt defaults on a random-init ViT-B/16 (no download), 10 tasks: prompt + key (+ attention)
    parameters, head excluded; the ledger files them under `prompts`, the ViT under `backbone`."""
    torch.manual_seed(0)
    model = ContinualModel(TimmBackbone((3, 224, 224), "vit_base_patch16_224", img_size=224), 100)
    ctx = _ctx(10, 100, (3, 32, 32))
    expected = {CodaPrompt: 3_840_000, DualPrompt: 493_056, L2PP: 483_840}
    for cls, count in expected.items():
        method = cls(model, ctx)
        trainable = [p for p in method.trainable_parameters()]
        prompt_params = sum(p.numel() for p in method.prompt.parameters())
        assert prompt_params == count, cls.__name__
        assert sum(p.numel() for p in trainable) == count + 768 * 100 + 100  # + the head
        ledger = measure(method)
        assert ledger.by_category["prompts"] == 4 * count
        assert ledger.by_category["backbone"] == 4 * sum(t.numel() for t in model.backbone.state_dict().values())
        assert ledger.by_category["heads"] == 4 * (768 * 100 + 100)
        assert not any(p.requires_grad for p in model.backbone.parameters())
    coda = CodaPrompt(model, ctx)
    coda.current_task = 2
    detail = coda.memory_report()
    assert detail["prompt_params_allocated"] == 3_840_000 and detail["prompt_params_used"] == 3 * 384_000


def test_prefix_injection_matches_timm_attention_and_a_reference():
    torch.manual_seed(0)
    model = _tiny_model(shape=(3, 16, 16))
    vit = PromptedViT(model.backbone)
    block, x = model.backbone.net.blocks[1], torch.randn(3, 17, 32)
    empty = torch.zeros(3, 0, 32)
    torch.testing.assert_close(prefixed_block(block, x, empty, empty), block(x), atol=1e-6, rtol=1e-5)
    # with prefixes: softmax over [P_k; K] against the same computation written out by hand
    pk, pv = torch.randn(3, 4, 32), torch.randn(3, 4, 32)
    attn, h = block.attn, block.norm1(x)
    q, k, v = attn.qkv(h).reshape(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
    k = torch.cat([pk.reshape(3, 4, 2, 16).transpose(1, 2), k], 2)
    v = torch.cat([pv.reshape(3, 4, 2, 16).transpose(1, 2), v], 2)
    a = ((q @ k.transpose(-1, -2)) * 16 ** -0.5).softmax(-1)
    ref = x + attn.proj((a @ v).transpose(1, 2).reshape(3, 17, 32))
    ref = ref + block.mlp(block.norm2(ref))
    torch.testing.assert_close(prefixed_block(block, x, pk, pv), ref, atol=1e-5, rtol=1e-4)
    # zero prefixes are not a no-op (keys with logit 0 still take softmax mass)
    zeros = torch.zeros(3, 4, 32)
    assert not torch.allclose(prefixed_block(block, x, zeros, zeros), block(x), atol=1e-4)
    with pytest.raises(ValueError, match="do not fit the attention"):
        prefixed_block(block, x, torch.randn(3, 4, 30), torch.randn(3, 4, 30))
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        vit.check_prefix_layers([0, 7])
    # the un-prompted forward equals timm's own forward_features; the query is its [CLS], without gradients
    img = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(vit(img), model.backbone.net.forward_features(img))
    assert not vit.query(img).requires_grad and vit(img, tokens=torch.zeros(2, 3, 32)).shape == (2, 20, 32)


def test_gram_schmidt_keeps_earlier_rows_and_makes_new_ones_orthonormal():
    torch.manual_seed(0)
    M = gram_schmidt_rows(torch.zeros(20, 4, 16), 0, 5)
    M2 = gram_schmidt_rows(M, 5, 10)
    assert torch.equal(M2[:5], M[:5]) and torch.equal(M2[10:], torch.zeros(10, 4, 16))
    U = M2[:10].flatten(1).double()
    gram = U @ U.t()
    torch.testing.assert_close(gram.diagonal(), torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-5
    with pytest.raises(ValueError, match="cannot exist in 16 dimensions"):
        gram_schmidt_rows(torch.zeros(20, 16), 10, 17)


def test_gram_schmidt_makes_new_rows_orthogonal_to_trained_earlier_rows():
    """After a task the earlier rows are trained: no longer unit-norm or mutually orthogonal. The new rows must
    still be orthogonal to them (projecting on the raw rows instead amplified their directions: |cos| up to 0.8)."""
    torch.manual_seed(0)
    M = gram_schmidt_rows(torch.zeros(20, 64), 0, 10)
    trained = M.clone()
    trained[:10] = 3.0 * M[:10] + 0.05 * torch.randn(10, 64)   # as after training: grown and no longer orthogonal
    out = gram_schmidt_rows(trained, 10, 20)
    assert torch.equal(out[:10], trained[:10])
    old, new = F.normalize(out[:10].double(), dim=1), out[10:20].double()
    assert (new @ old.t()).abs().max() < 1e-5
    torch.testing.assert_close(new @ new.t(), torch.eye(10, dtype=torch.float64), atol=1e-6, rtol=0)


def test_attended_cosines_equal_the_papers_broadcast_form_in_value_and_gradient():
    """CODA-Prompt's alpha = cos(q * A_m, K_m) computed as two products must equal the (B, M, D) broadcast form of
    the paper and the official code, in value and in the gradients of A and K (the query has none)."""
    torch.manual_seed(0)
    q = torch.randn(6, 16, dtype=torch.float64)
    A = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    K = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    broadcast = torch.einsum("bmd,md->bm", F.normalize(q[:, None] * A[None], dim=2), F.normalize(K, dim=1))
    fast = attended_cosines(q, A, K)
    torch.testing.assert_close(fast, broadcast, atol=1e-12, rtol=0)
    weights = torch.randn(6, 5, dtype=torch.float64)
    grads_broadcast = torch.autograd.grad((broadcast * weights).sum(), (A, K))
    grads_fast = torch.autograd.grad((fast * weights).sum(), (A, K))
    for a, b in zip(grads_fast, grads_broadcast):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert fast.abs().max() <= 1.0


def test_coda_freezes_earlier_components_and_masks_past_classes():
    model = _tiny_model()
    method = CodaPrompt(model, _ctx(), pool_size=10, length=4)
    backbone0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    method.start_task(_Task(0))
    x, y = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1] * 4)
    method.observe(x, y, 0)
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    method.start_task(_Task(1))  # Gram-Schmidt init of task 1's components
    after_init = {k: v.detach().clone() for k, v in method.state_dict().items()}
    for name in before:
        if name.startswith("prompt."):
            assert torch.equal(after_init[name][:2], before[name][:2]), name   # task 0's rows kept bit for bit
            assert not torch.equal(after_init[name][2:4], before[name][2:4]), name
            old, new = F.normalize(after_init[name][:2].flatten(1).double(), dim=1), after_init[name][2:4].flatten(1)
            assert (new.double() @ old.t()).abs().max() < 1e-5, name          # orthogonal to the trained rows
    method.zero_grad(set_to_none=True)
    feats, _ = method.features(method.augment(x), train=True, task_id=1)
    torch.nn.functional.cross_entropy(method.model.head(feats)[:, 2:4], torch.tensor([0, 1] * 4)).backward()
    for name, p in method.prompt.named_parameters():
        assert torch.count_nonzero(p.grad[:2]) == 0 and torch.count_nonzero(p.grad[4:]) == 0, name
        assert torch.count_nonzero(p.grad[2:4]) > 0, name
    method.opt.zero_grad(set_to_none=True)
    head_w = model.head.weight.detach().clone()
    method.observe(x, torch.tensor([2, 3] * 4), 1)
    changed = (model.head.weight.detach() != head_w).any(1)
    assert changed[2:4].all() and not changed[:2].any() and not changed[4:].any()  # past and future classes masked
    for name, p in method.prompt.named_parameters():
        assert torch.equal(p.detach()[:2], after_init[f"prompt.{name}"][:2]), name  # frozen through the step
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone0[k]), k
    assert method(method.preprocess(x)).shape == (8, 10)


def test_l2p_selection_pull_constraint_and_batchwise():
    model = _tiny_model()
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    l2p = L2P(model, _ctx(), pool_size=6, length=2, top_k=3)
    feats, loss = l2p.features(l2p.augment(x), train=True, task_id=0)
    q = l2p.vit.query(l2p.augment(x))
    idx, cos = l2p.select(q, train=True)
    assert (idx == idx[0]).all() and feats.shape == (8, 32)       # batch-wise: one prompt set for the batch
    torch.testing.assert_close(torch.as_tensor(loss), 0.5 * (1 - cos).sum(1).mean())
    idx_test, _ = l2p.select(q, train=False)
    assert torch.equal(idx_test, (torch.nn.functional.normalize(q, dim=1)
                                  @ torch.nn.functional.normalize(l2p.prompt.keys, dim=1).t()).topk(3).indices)
    pp = L2PP(model, _ctx(), pool_size=6, length=4, top_k=2)
    _, loss = pp.features(pp.augment(x), train=True, task_id=0)
    idx, cos = pp.select(pp.vit.query(pp.augment(x)), train=True)
    torch.testing.assert_close(torch.as_tensor(loss), (1 - cos).sum())  # each sample's own keys, summed


def test_bad_inputs_are_clear_errors_before_training():
    ctx = _ctx()
    with pytest.raises(ValueError, match="timm Vision Transformer"):
        CodaPrompt(ContinualModel(MLP((1, 8, 8)), 10), ctx)
    model = _tiny_model()
    with pytest.raises(ValueError, match="top_k=5 prompts cannot be chosen from a pool of 3"):
        L2PP(model, ctx, pool_size=3, top_k=5, length=4)
    with pytest.raises(ValueError, match="5 tasks do not divide it"):
        CodaPrompt(model, ctx, pool_size=12, length=4)
    with pytest.raises(ValueError, match="pool_size=100 keys cannot be mutually orthogonal"):
        CodaPrompt(model, ctx, pool_size=100, length=4)
    with pytest.raises(ValueError, match="pool_size=3 E-prompts for 5 tasks"):
        DualPrompt(model, ctx, pool_size=3, e_length=4, g_length=2)
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        CodaPrompt(model, ctx, pool_size=10, length=4, layers=[0, 9])


def test_head_ft_trains_only_the_head():
    model = _tiny_model()
    method = HeadFinetune(model, _ctx())
    assert [p for p in method.trainable_parameters()] == list(model.head.parameters())
    assert measure(method).by_category["prompts"] == 0


def test_the_cosine_schedule_sets_every_epochs_learning_rate():
    """The CODA code's per-epoch cosine reaches the optimizer: the learning rate of epoch e is cosine_lr(lr, e, E)
    (a regression test: the schedule was once silently replaced by the base class's milestone attribute)."""
    from clzoo.methods.parts.prompting import cosine_lr

    ctx = _ctx(lr=0.1)
    ctx.epochs = 4
    method = HeadFinetune(_tiny_model(), ctx)
    task = _Task(0)
    method.start_task(task)
    seen = []
    for _ in range(ctx.epochs):
        seen.append(method.opt.param_groups[0]["lr"])
        method.observe(task.x_train[:8], task.y_train[:8], 0)
        method.end_epoch()
    assert seen == [cosine_lr(0.1, e, 4) for e in range(4)] and seen[-1] < seen[0]


def test_resize_feeds_small_images_to_a_larger_vit():
    """model=vit_b16 upsamples 32x32 CIFAR to 224: the same path on a tiny ViT built for 16x16 fed 8x8 images."""
    kw = {k: v for k, v in TINY_VIT.items() if k not in ("_target_", "name", "img_size")}
    backbone = TimmBackbone((1, 8, 8), "vit_tiny_patch16_224", img_size=16, resize=16, **kw)
    x = torch.rand(2, 1, 8, 8)
    assert backbone(x).shape == (2, 32)
    vit = PromptedViT(backbone)
    torch.testing.assert_close(vit.query(x), backbone.net.forward_features(
        torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))[:, 0])
