#!/usr/bin/env python
"""Speed of one prompt-method training step: clzoo's CODA-Prompt ``observe`` vs the same step as a bare loop.

    python bench/prompt_step.py                 # ViT for 32x32 (model=vit_c32), batch 128, writes a table to stdout
    python bench/prompt_step.py --quick         # fewer steps (seconds)

A prompt step costs two ViT forward passes (the frozen query without gradients, then the prompted pass with a
backward through the frozen network into the prompts). Both sides start from the same weights and batch:

* ``clzoo``: ``CodaPrompt.observe`` (uint8 batch -> [0, 1] floats, the query, the attention-weighted prompt at
  layers 0-4, prefix attention through clzoo's ``PromptedViT``, masked cross-entropy, Adam step, the code's
  per-epoch cosine learning rate);
* ``bare``: the same computation written here directly on the timm model (its own prefix attention), no
  clzoo code at all.

The first step's losses must agree (same computation); timings are medians over interleaved repeats.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from clzoo.methods.base import RunContext, StreamInfo  # noqa: E402
from clzoo.methods.prompt.coda_prompt import CodaPrompt  # noqa: E402
from clzoo.models import ContinualModel, TimmBackbone  # noqa: E402

VIT = dict(patch_size=8, depth=6, embed_dim=128, num_heads=4)  # clzoo/conf/model/vit_c32.yaml


class _Task:
    def __init__(self, n, task_id=0):
        self.id, self.n_train = task_id, n
        self.x_train, self.y_train = torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)


def build(batch: int, task: int = 0):
    torch.manual_seed(0)
    model = ContinualModel(TimmBackbone((3, 32, 32), "vit_tiny_patch16_224", img_size="auto", **VIT), 100)
    info = StreamInfo(10, 100, (3, 32, 32), [list(range(10 * t, 10 * t + 10)) for t in range(10)])
    ctx = RunContext(info, optimizer={"name": "adam", "lr": 1e-3}, batch_size=batch, epochs=5)
    method = CodaPrompt(model, ctx)
    for t in range(1, task):  # the pool as at task `task`: the earlier slices initialised (start_task does `task`'s)
        method.init_components(t)
    method.train()
    method.start_task(_Task(50 * batch, task))
    return method


def bare_step_factory(method, task: int = 0):
    """The same step without clzoo: a frozen timm ViT, CODA's prompt at layers 0-4, prefix attention, Adam. The
    attended cosines are written as the paper and the official code write them, over a ``(B, M, D)`` tensor."""
    vit = method.model.backbone.net
    head = method.model.head
    P = {l: method.prompt.p[str(l)] for l in range(5)}
    K = {l: method.prompt.k[str(l)] for l in range(5)}
    A = {l: method.prompt.a[str(l)] for l in range(5)}
    start, stop = task * method.per_task, (task + 1) * method.per_task
    opt = torch.optim.Adam([*P.values(), *K.values(), *A.values(), *head.parameters()], lr=1e-3)
    classes = torch.arange(10 * task, 10 * task + 10)

    def attention(attn, x, pk, pv):
        B, N, C = x.shape
        H = attn.num_heads
        q, k, v = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        k = torch.cat([pk.reshape(B, -1, H, C // H).transpose(1, 2), k], 2)
        v = torch.cat([pv.reshape(B, -1, H, C // H).transpose(1, 2), v], 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return attn.proj(out)

    def step(x_uint8, y):
        x = x_uint8.float() / 255
        with torch.no_grad():
            q = vit.forward_features(x)[:, 0]
        h = vit._pos_embed(vit.patch_embed(x))
        for i, blk in enumerate(vit.blocks):
            if i < 5:
                k_, a_, p_ = (torch.cat([m[:start].detach(), m[start:stop]]) for m in (K[i], A[i], P[i]))
                w = torch.einsum("bmd,md->bm", F.normalize(q[:, None] * a_[None], dim=2), F.normalize(k_, dim=1))
                prompt = torch.einsum("bm,mld->bld", w, p_)
                h = h + attention(blk.attn, blk.norm1(h), prompt[:, :4], prompt[:, 4:])
                h = h + blk.mlp(blk.norm2(h))
            else:
                h = blk(h)
        logits = head(vit.norm(h)[:, 0])
        mask = torch.full_like(logits, float("-inf"))
        mask[:, classes] = 0
        loss = F.cross_entropy(logits + mask, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--task", type=int, default=0, help="the step of this task (0-9): CODA-Prompt trains with "
                   "(task + 1) x 10 components, the earlier ones frozen")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.batch = 2, 2, 32
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = 10 * args.task + torch.randint(0, 10, (args.batch,), generator=gen)

    clzoo_method, bare_method = build(args.batch, args.task), build(args.batch, args.task)
    bare = bare_step_factory(bare_method, args.task)
    first = (float(clzoo_method.observe(x, y, args.task)), float(bare(x, y)))
    if abs(first[0] - first[1]) > 1e-4 * max(1.0, abs(first[0])):
        print(f"the two steps compute different losses: clzoo {first[0]:.6f}, bare {first[1]:.6f}", file=sys.stderr)
        return 1
    times = {"clzoo": [], "bare": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
        for name, fn in (("clzoo", lambda: clzoo_method.observe(x, y, args.task)), ("bare", lambda: bare(x, y))):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps)
    c, b = statistics.median(times["clzoo"]), statistics.median(times["bare"])
    print(f"CODA-Prompt step of task {args.task} ({(args.task + 1) * 10} components), ViT 32x32 (patch 8, depth 6, "
          f"width 128), batch {args.batch}, {args.threads} thread(s); "
          f"first-step loss {first[0]:.5f} (both)")
    print(f"| system | s/step (median of {args.repeats} x {args.steps}) | steps/s |")
    print("|---|---|---|")
    print(f"| clzoo (CodaPrompt.observe) | {c:.4f} | {1 / c:.2f} |")
    print(f"| bare loop | {b:.4f} | {1 / b:.2f} |")
    print(f"ratio clzoo / bare: {c / b:.3f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
