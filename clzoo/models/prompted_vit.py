"""One prompt-injection wrapper over a frozen timm Vision Transformer.

Prompt-based continual learning (L2P, DualPrompt, CODA-Prompt) leaves a pretrained ViT untouched and feeds it
learned prompts in one of two ways:

* **prefix tuning** (L2P++, DualPrompt, CODA-Prompt as in GT-RIPL/CODA-Prompt ``models/vit.py``): at a chosen
  block, a prefix ``(P_k, P_v)`` of ``L_k`` / ``L_v`` vectors of the attention width is prepended to that block's
  keys and values *after* the qkv projection (per head: ``P_k`` reshaped to ``(heads, L_k, head_dim)``), so the
  queries also attend to the prompts; the number of tokens does not change;
* **prompt tuning** (L2P, Wang et al., CVPR 2022): prompt tokens are prepended to the token sequence after the
  position embedding and travel through every block.

The *query* of a prompt pool is the frozen ViT's own [CLS] feature on the un-prompted input, computed without
gradients (a second forward pass, as in the CODA-Prompt code).

The wrapper holds no parameters and does not register the ViT as a sub-module (it stays where the model keeps it,
``model.backbone.net``), so the state dict and the memory ledger see the ViT once, as ``backbone``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PromptedViT(nn.Module):
    """Prefix / prompt injection into a timm ``VisionTransformer``; see the module docstring."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        net = getattr(backbone, "net", backbone)
        blocks = getattr(net, "blocks", None)
        if blocks is None or not hasattr(net, "patch_embed") or not hasattr(net, "_pos_embed"):
            raise ValueError(f"prompt methods need a timm Vision Transformer backbone (model=vit, model=vit_c32 or "
                             f"model=vit_b16), not {type(net).__name__}")
        self.__dict__["vit"] = net          # not a sub-module: the model owns (and the ledger counts) the ViT
        self.__dict__["backbone"] = backbone
        self.depth = len(blocks)
        self.dim = int(net.embed_dim)
        self.num_prefix_tokens = int(getattr(net, "num_prefix_tokens", 1))
        if self.num_prefix_tokens < 1 or getattr(net, "cls_token", None) is None:
            raise ValueError("prompt methods read the [CLS] token; this timm ViT has none (class_token=False)")

    # ------------------------------------------------------------------ checks
    def check_prefix_layers(self, layers) -> None:
        """Every prompted layer exists and has timm's qkv attention whose width equals the prompt width."""
        for layer in layers:
            if not 0 <= int(layer) < self.depth:
                raise ValueError(f"prompt layer {layer} does not exist: the ViT has {self.depth} blocks (0..{self.depth - 1})")
            attn = self.vit.blocks[int(layer)].attn
            if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "proj")):
                raise ValueError(f"block {layer} has no timm qkv attention ({type(attn).__name__}); prefix tuning "
                                 f"needs timm's vision_transformer.Attention")
            width = attn.num_heads * attn.head_dim
            if width != self.dim:
                raise ValueError(f"block {layer}: attention width {attn.num_heads}x{attn.head_dim}={width} differs from "
                                 f"the embedding width {self.dim}; prefixes are vectors of the attention width")

    # ------------------------------------------------------------------ forward passes
    def prepare(self, x: Tensor) -> Tensor:
        prepare = getattr(self.backbone, "prepare", None)
        return prepare(x) if prepare is not None else x

    @torch.no_grad()
    def query(self, x: Tensor) -> Tensor:
        """The frozen, un-prompted [CLS] feature (after the final norm), without gradients: ``(B, D)``."""
        return self.vit.forward_features(self.prepare(x))[:, 0]

    def forward(self, x: Tensor, prefixes: dict | None = None, tokens: Tensor | None = None) -> Tensor:
        """The token sequence after the final norm, ``(B, n_tokens, D)``.

        ``prefixes``: ``{layer: (P_k, P_v)}`` with ``P_k`` ``(B, L_k, D)`` and ``P_v`` ``(B, L_v, D)``;
        ``tokens``: ``(B, L, D)`` prompt tokens prepended to the sequence (they come first in the output).
        """
        vit = self.vit
        x = vit.patch_embed(self.prepare(x))
        x = vit._pos_embed(x)
        if tokens is not None:
            x = torch.cat([tokens.to(x.dtype), x], dim=1)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        prefixes = prefixes or {}
        for i, block in enumerate(vit.blocks):
            prefix = prefixes.get(i)
            x = block(x) if prefix is None else prefixed_block(block, x, *prefix)
        return vit.norm(x)


def prefixed_block(block: nn.Module, x: Tensor, pk: Tensor, pv: Tensor) -> Tensor:
    """timm's ``Block.forward`` with prefixes in its attention (pre-norm residual block)."""
    x = x + block.drop_path1(block.ls1(prefixed_attention(block.attn, block.norm1(x), pk, pv)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def prefixed_attention(attn: nn.Module, x: Tensor, pk: Tensor, pv: Tensor) -> Tensor:
    """timm's ``Attention.forward`` with ``pk`` / ``pv`` prepended to the projected keys / values of every head."""
    B, N, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if pk.shape[-1] != H * hd or pv.shape[-1] != H * hd or pk.shape[0] != B or pv.shape[0] != B:
        raise ValueError(f"prefix shapes {tuple(pk.shape)} / {tuple(pv.shape)} do not fit the attention "
                         f"(batch {B}, {H} heads x {hd} = {H * hd} wide)")
    k = torch.cat([pk.reshape(B, -1, H, hd).transpose(1, 2).to(k.dtype), k], dim=2)
    v = torch.cat([pv.reshape(B, -1, H, hd).transpose(1, 2).to(v.dtype), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, H * hd)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))
