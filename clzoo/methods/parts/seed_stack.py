"""One training step of several seeds' MLPs computed together, with the numbers each seed computes alone.

Several seeds of a small model are cheap to train in one process because most of a CPU step on an MLP is per-op
overhead, not arithmetic (bench/throughput.py). :func:`grouped_cross_entropy_step` does
``m.step(F.cross_entropy(m.model(x), y))`` for every member ``m`` at once: the members' weights are stacked, each
linear layer is one batched product, every member keeps its own optimizer. The seeds' results must equal what a
separate run prints, bit for bit, so the batched products are chosen to repeat the separate run's kernels:

* forward ``torch.baddbmm(bias, x, W^T)`` is what ``F.linear`` (``addmm``) computes for each member; ``vmap`` of
  ``F.linear`` is not (it adds the bias after the product: last-bit differences, measured with torch 2.14 / 2.15);
* backward (:class:`StackedLinear`) follows ``addmm``'s own formulas: weight gradient ``grad^T @ x`` (autograd of
  ``baddbmm`` computes ``(x^T @ grad)^T``, which differs in the last bits for the 100 -> 10 head), input gradient
  ``grad @ W``, bias gradient ``grad.sum`` over the batch;
* each member's loss is its own ``F.cross_entropy`` on its slice of the logits, and their sum is differentiated,
  so every member's gradient is exactly its own; its optimizer then steps its own parameters.

Kernels are chosen by shape, so before a shape is used it is probed once per process: random inputs of exactly
that shape through the stacked layer and through ``F.linear`` member by member, forward and backward; any bit of
difference and that step (and every later one of that shape) runs member by member instead. The seed-group
tests train whole runs both ways and compare every number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models import ContinualModel
from ...models.backbones import MLP


class StackedLinear(torch.autograd.Function):
    """``F.linear`` of every member at once: ``x (S, B, I)``, ``weight (S, O, I)``, ``bias (S, O)`` -> ``(S, B, O)``,
    with the same kernels as the members' separate ``addmm`` forward and backward (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


#: (members, batch, in, out, input needs grad) -> whether the stacked layer is bit-identical there (probed)
_EXACT: dict[tuple, bool] = {}


def stacked_layer_is_exact(members: int, batch: int, n_in: int, n_out: int, input_grad: bool) -> bool:
    """Probe (once per process and shape) that :class:`StackedLinear` gives, bit for bit, what ``F.linear``
    gives each member alone, forward and backward."""
    key = (members, batch, n_in, n_out, input_grad)
    if key not in _EXACT:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(members, batch, n_in, generator=g)
        w = torch.randn(members, n_out, n_in, generator=g) / n_in ** 0.5
        b = torch.randn(members, n_out, generator=g)
        grad = torch.randn(members, batch, n_out, generator=g)
        xs, ws, bs = (t.clone().requires_grad_(input_grad or t is not x) for t in (x, w, b))
        out = StackedLinear.apply(xs, ws, bs)
        out.backward(grad)
        exact = True
        for s in range(members):
            xa, wa, ba = x[s].clone().requires_grad_(input_grad), w[s].clone().requires_grad_(), b[s].clone().requires_grad_()
            alone = F.linear(xa, wa, ba)
            alone.backward(grad[s])
            pairs = [(alone, out[s]), (wa.grad, ws.grad[s]), (ba.grad, bs.grad[s])]
            if input_grad:
                pairs.append((xa.grad, xs.grad[s]))
            exact = exact and all(torch.equal(a, c) for a, c in pairs)
        _EXACT[key] = exact
    return _EXACT[key]


def _mlp_layers(model) -> list[nn.Linear] | None:
    """The linear layers of a :class:`ContinualModel` over an :class:`MLP` (Flatten, (Linear, ReLU)*, head), or
    None for any other model."""
    if not isinstance(model, ContinualModel) or not isinstance(model.backbone, MLP):
        return None
    net = list(model.backbone.net)
    if not net or not isinstance(net[0], nn.Flatten) or len(net) % 2 != 1:
        return None
    pairs = net[1:]
    if not all(isinstance(a, nn.Linear) and type(r) is nn.ReLU for a, r in zip(pairs[::2], pairs[1::2])):
        return None
    return [*pairs[::2], model.head]


def _plain_sgd_lr(method) -> float | None:
    """The learning rate when ``method.opt.step()`` is exactly ``p.add_(p.grad, alpha=-lr)`` for each parameter
    with a gradient (torch's SGD without momentum, weight decay, hooks or schedule), else None."""
    opt = method.opt
    if type(opt) is not torch.optim.SGD or len(opt.param_groups) != 1 or opt._optimizer_step_pre_hooks \
            or opt._optimizer_step_post_hooks or getattr(method, "milestone_schedule", None) is not None \
            or getattr(method, "epoch_schedules", None):
        return None
    g = opt.param_groups[0]
    if g["momentum"] or g["weight_decay"] or g["maximize"] or g["nesterov"] or g["differentiable"] or g["fused"] \
            or isinstance(g["lr"], torch.Tensor):
        return None
    return float(g["lr"])


#: (stacked shape, lr) -> whether ``stack.add_(grad, alpha=-lr)`` equals that update slice by slice (probed)
_ADD_EXACT: dict[tuple, bool] = {}


def stacked_update_is_exact(shape: tuple, lr: float) -> bool:
    """Probe (once per process, shape and learning rate) that the SGD update of a stacked tensor gives, bit for
    bit, the update of each member's slice alone (elementwise kernels may treat a tensor's last elements apart)."""
    key = (tuple(shape), lr)
    if key not in _ADD_EXACT:
        g = torch.Generator().manual_seed(4321)
        param, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        together = param.clone().add_(grad, alpha=-lr)
        _ADD_EXACT[key] = all(torch.equal(param[s].clone().add_(grad[s], alpha=-lr), together[s])
                              for s in range(shape[0]))
    return _ADD_EXACT[key]


def _stacked_sgd(members, stack: "_Stack", tensors: list[Tensor]) -> bool:
    """When every member steps with the same plain SGD over exactly its stacked layers (no other parameter),
    update the stacks in place, one ``add_`` per tensor (probed exact, :func:`stacked_update_is_exact`); returns
    whether it did."""
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return False
    lrs = {_plain_sgd_lr(m) for m in members}
    if len(lrs) != 1 or None in lrs:
        return False
    lr = lrs.pop()
    if stack.owned is None:
        stack.owned = all(len(m.opt.param_groups[0]["params"]) == len(ls) * 2 and all(
            a is b for a, b in zip(m.opt.param_groups[0]["params"], [p for layer in ls for p in (layer.weight, layer.bias)]))
            for m, ls in zip(members, stack.layers))
    if not stack.owned or not all(stacked_update_is_exact(t.shape, lr) for t in tensors):
        return False
    with torch.no_grad():
        for t in tensors:
            t.data.add_(t.grad, alpha=-lr)
    return True


def _optimizer_steps(members) -> None:
    """Every member's ``opt.step()``. Plain SGD steps of all members are one ``torch._foreach_add_`` per learning
    rate, which is what torch's SGD does (foreach) and, on CPU, ``add_`` tensor by tensor, as its single-tensor
    path does: the same kernel on the same tensors."""
    from torch.optim.optimizer import _global_optimizer_pre_hooks, _global_optimizer_post_hooks

    plain: dict[float, tuple[list, list]] = {}
    for m in members:
        lr = None if (_global_optimizer_pre_hooks or _global_optimizer_post_hooks) else _plain_sgd_lr(m)
        if lr is None:
            m.opt.step()
            continue
        params, grads = plain.setdefault(lr, ([], []))
        for p in m.opt.param_groups[0]["params"]:
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
    with torch.no_grad():
        for lr, (params, grads) in plain.items():
            torch._foreach_add_(params, grads, alpha=-lr)


class _Stack:
    """The members' linear layers with their weights moved into one stacked tensor per layer (each member's
    parameter is a view of its slice, so its own optimizer updates the stack in place and nothing is copied per
    step). :func:`release_stacks` gives every parameter its own storage back."""

    def __init__(self, members, layers: list[list[nn.Linear]]):
        self.members, self.layers = list(members), layers
        self.owned = None  # whether each member's optimizer steps exactly its stacked layers (see _stacked_sgd)
        self.weights, self.biases = [], []
        for k in range(len(layers[0])):
            for name, out in (("weight", self.weights), ("bias", self.biases)):
                stacked = torch.stack([getattr(ls[k], name).detach() for ls in layers])
                for s, ls in enumerate(layers):
                    getattr(ls[k], name).data = stacked[s]
                out.append(stacked)

        self.pointers = [(p, p.data_ptr()) for ls in layers for layer in ls for p in (layer.weight, layer.bias)]

    def intact(self, members) -> bool:
        return all(a is b for a, b in zip(self.members, members)) and all(p.data_ptr() == ptr for p, ptr in self.pointers)

    def release(self) -> None:
        for ls in self.layers:
            for layer in ls:
                for p in (layer.weight, layer.bias):
                    p.data = p.data.clone()


#: the stacks in use, by the ids of their members
_STACKS: dict[tuple, _Stack] = {}


def release_stacks() -> None:
    """Give every stacked parameter its own storage back (before anything else than a training step looks at the
    models: checkpoints, evaluation, end_task). The next grouped step stacks them again."""
    while _STACKS:
        _STACKS.popitem()[1].release()


def _stack_for(members, inputs: list[Tensor]) -> _Stack | None:
    """The members' stack when their step can be computed stacked and exactly, else None."""
    if len(members) < 2 or any(x.shape != inputs[0].shape or x.dtype != torch.float32 or x.device.type != "cpu"
                               for x in inputs) or not all(m.model.training for m in members):
        return None
    key = tuple(id(m) for m in members)
    stack = _STACKS.get(key)
    if stack is None or not stack.intact(members):
        if stack is not None:
            del _STACKS[key]
        layers = [_mlp_layers(m.model) for m in members]
        if any(ls is None for ls in layers):
            return None
        shapes = [tuple(layer.weight.shape) for layer in layers[0]]
        for ls in layers:
            if [tuple(layer.weight.shape) for layer in ls] != shapes or any(
                    layer.bias is None or layer.weight.dtype != torch.float32 or layer.weight.device.type != "cpu"
                    or not layer.weight.requires_grad or not layer.bias.requires_grad for layer in ls):
                return None
        stack = _STACKS[key] = _Stack(members, layers)
    batch = inputs[0].shape[0]
    if not all(stacked_layer_is_exact(len(members), batch, w.shape[2], w.shape[1], k > 0)
               for k, w in enumerate(stack.weights)):
        return None
    return stack


def grouped_cross_entropy_step(members, inputs: list[Tensor], labels: list[Tensor]) -> list[Tensor]:
    """``[m.step(F.cross_entropy(m.model(x), y)) for m, x, y in zip(members, inputs, labels)]``, computed stacked
    when the members are MLPs of one shape fed batches of one shape (module docstring), else member by member."""
    stack = _stack_for(members, inputs)
    if stack is None:
        return [m.step(F.cross_entropy(m.model(x), y)) for m, x, y in zip(members, inputs, labels)]
    from ..base import clear_grads

    weights = [w.detach().requires_grad_() for w in stack.weights]
    biases = [b.detach().requires_grad_() for b in stack.biases]
    h = torch.stack(inputs).flatten(2)
    last = len(weights) - 1
    for k in range(last + 1):
        h = StackedLinear.apply(h, weights[k], biases[k])
        if k < last:
            h = torch.relu(h)
    losses = [F.cross_entropy(logits, y) for logits, y in zip(h.unbind(0), labels)]
    for m in members:
        clear_grads(m.opt)
    torch.autograd.backward(losses)  # each loss's gradient is 1, as in loss.backward()
    tensors = [*weights, *biases]
    if not _stacked_sgd(members, stack, tensors):
        for s, ls in enumerate(stack.layers):
            for k, layer in enumerate(ls):
                layer.weight.grad, layer.bias.grad = weights[k].grad[s], biases[k].grad[s]
        _optimizer_steps(members)
    return [loss.detach() for loss in losses]
