"""Per-sample gradient similarities of networks made of linear layers, without materialising the gradients.

For a linear layer ``out = a W^T + b`` and a per-sample loss, sample ``i``'s weight gradient is the outer product
``delta_i a_i^T`` of the gradient at the layer's output and the layer's input (the identity behind Opacus and
"ghost clipping", Goodfellow 2015). So, with a reference direction ``R`` shaped like ``W``::

    <g_i, R> = delta_i^T R a_i          ||g_i||^2 = ||delta_i||^2 ||a_i||^2

One forward and one backward of the summed loss give every ``delta_i`` and ``a_i``; the ``[n, P]`` matrix of
per-sample gradients (31 MB for 100 MNIST samples through a 2x100 MLP) is never built. GSS scores each sample by
its largest gradient cosine to a few buffer gradients: this is the same number as ``vmap(grad(...))`` up to float
rounding, several times faster (bench/online.py).

It applies when every trainable parameter belongs to an ``nn.Linear`` called once per forward on ``[n, in]``
inputs, and the samples do not interact (evaluation mode: no batch statistics). :func:`linear_grad_similarity`
returns ``None`` otherwise, and the caller falls back to ``torch.func``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def _linear_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The ``nn.Linear`` modules holding all of ``model``'s trainable parameters, or ``None`` if some trainable
    parameter lives elsewhere (or a parameter is shared between modules)."""
    layers, owned = [], set()
    for module in model.modules():
        if isinstance(module, nn.Linear) and any(p.requires_grad for p in module.parameters(recurse=False)):
            layers.append(module)
            owned.update(id(p) for p in module.parameters(recurse=False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if any(id(p) not in owned for p in trainable) or model.training:
        return None
    return layers


def linear_grad_similarity(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                           reference: Tensor) -> tuple[Tensor, Tensor] | None:
    """Dot products of each sample's gradient with each row of ``reference`` and each gradient's squared norm.

    ``loss_fn(logits, y)`` must be a sum of per-sample losses (e.g. ``cross_entropy(..., reduction="sum")``).
    ``reference`` is ``[K, P]`` over ``model``'s trainable parameters flattened in ``model.parameters()`` order.
    Returns ``(dots [n, K], squared_norms [n])``, or ``None`` when the model is not made of linear layers only
    (see the module docstring)."""
    layers = _linear_layers(model)
    if not layers:
        return None
    inputs, outputs = {}, {}

    def keep(module, args, out):
        if module in outputs or args[0].dim() != 2:  # called twice or on sequences: not the outer-product case
            outputs[module] = None
            return
        inputs[module], outputs[module] = args[0].detach(), out

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        loss = loss_fn(model(x), y)
    finally:
        for handle in handles:
            handle.remove()
    if any(outputs.get(layer) is None for layer in layers):
        return None
    deltas = torch.autograd.grad(loss, [outputs[layer] for layer in layers])
    delta_of = dict(zip(layers, deltas))

    offsets, offset = {}, 0
    for p in model.parameters():
        if p.requires_grad:
            offsets[id(p)] = offset
            offset += p.numel()
    if offset != reference.shape[1]:
        raise ValueError(f"reference has {reference.shape[1]} columns, the model {offset} trainable parameters")

    dots = x.new_zeros(len(x), reference.shape[0])
    squares = x.new_zeros(len(x))
    for layer in layers:
        a, delta = inputs[layer], delta_of[layer]
        w = layer.weight
        if w.requires_grad:
            r = reference[:, offsets[id(w)]:offsets[id(w)] + w.numel()].reshape(-1, *w.shape)  # [K, out, in]
            dots += (torch.matmul(a, r.transpose(1, 2)) * delta).sum(-1).t()  # [K, n, out] -> [n, K]
            squares += delta.pow(2).sum(1) * a.pow(2).sum(1)
        b = layer.bias
        if b is not None and b.requires_grad:
            dots += delta @ reference[:, offsets[id(b)]:offsets[id(b)] + b.numel()].t()
            squares += delta.pow(2).sum(1)
    return dots, squares
