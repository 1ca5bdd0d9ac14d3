"""One training step of several seeds' MLPs computed together, with the numbers each seed computes alone.

Several seeds of a small model are cheaper to train in one process when their step is computed together:
:func:`grouped_cross_entropy_step` does ``m.step(F.cross_entropy(m.model(x), y))`` for every member ``m`` at
once. The members' weights are stacked (each member's parameters are views of its slice), the forward and the
backward are written out as the kernels autograd would run, without the autograd engine and the module calls
(on a CPU step of a small MLP at batch 10 these cost about as much as the arithmetic, bench/RESULTS.md), and plain
SGD updates the stacks in place (one ``_foreach_add_``). The seeds' results must equal what a separate run prints, bit for bit, so the
kernels are the separate run's:

* each layer is one ``baddbmm`` over the members, which computes what ``F.linear`` (``addmm``) computes for each
  (``vmap`` of ``F.linear`` does not: it adds the bias after the product, last-bit differences);
* backward follows ``addmm``'s own formulas: weight gradient ``grad^T @ x``, input gradient ``grad @ W``, bias
  gradient ``grad.sum`` over the batch; ReLU's is ``threshold_backward`` on its output; cross-entropy's is
  ``nll_loss_backward`` then ``_log_softmax_backward_data``, each member's loss its own ``nll_loss`` (mean);
* the SGD update ``p.add_(grad, alpha=-lr)`` runs on the stacked tensors.

Kernels are chosen by shape, so before a shape is used it is probed once per process: random weights and inputs
of exactly that shape through this step and through autograd member by member (loss and every gradient, and the
update); any bit of difference and that step (and every later one of that shape) runs member by member instead.
The seed-group tests train whole runs both ways and compare every number.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models import ContinualModel
from ...models.backbones import MLP

_aten = torch.ops.aten


@functools.lru_cache(maxsize=None)
def _mean_nll_grad(batch: int) -> float:
    """``nll_loss_backward``'s value at the label for a mean over ``batch`` samples: ``-(1 / batch)`` in float32."""
    return -(1.0 / torch.tensor(float(batch))).item()


@torch.no_grad()
def _losses_and_grads(weights: list[Tensor], biases: list[Tensor], x: Tensor, labels: Tensor):
    """Cross-entropy of each member's MLP (``x (S, B, I)``, stacked ``weights[k] (S, O, I)``, ``biases[k]
    (S, O)``, ``labels (S, B)``) and its gradients, with the kernels autograd runs for one member alone (module
    docstring). Returns ``(losses, weight_grads, bias_grads)``."""
    batch = x.shape[1]
    last = len(weights) - 1
    acts, h = [x], x
    for k in range(last + 1):
        if k:
            acts.append(torch.relu(h))
        h = torch.baddbmm(biases[k].unsqueeze(1), acts[k], weights[k].transpose(1, 2))
    log_p = torch.log_softmax(h, 2)
    losses = [_aten.nll_loss_forward(lp, y, None, 1, -100)[0] for lp, y in zip(log_p.unbind(0), labels.unbind(0))]
    # nll_loss_backward of a mean: -(1 / batch) at each sample's label, 0 elsewhere (the value in float32)
    grad = torch.zeros_like(log_p).scatter_(2, labels.unsqueeze(2), _mean_nll_grad(batch))
    grad = _aten._log_softmax_backward_data(grad, log_p, 2, log_p.dtype)
    weight_grads, bias_grads = [None] * (last + 1), [None] * (last + 1)
    for k in range(last, -1, -1):
        weight_grads[k], bias_grads[k] = torch.bmm(grad.transpose(1, 2), acts[k]), grad.sum(1)
        if k:
            grad = _aten.threshold_backward(torch.bmm(grad, weights[k]), acts[k], 0)
    return losses, weight_grads, bias_grads


#: (members, batch, layer shapes, lr) -> whether the written-out step is bit-identical there (probed)
_EXACT: dict[tuple, bool] = {}


def grouped_step_is_exact(members: int, batch: int, shapes: tuple, lr: float | None) -> bool:
    """Probe (once per process and shape) that :func:`_losses_and_grads` gives, bit for bit, the loss and the
    gradients autograd gives each member alone, and (``lr`` not None) that the SGD update of the stacked tensors
    equals each member's own update."""
    key = (members, batch, tuple(shapes), lr)
    if key not in _EXACT:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(members, batch, shapes[0][1], generator=g)
        labels = torch.randint(0, shapes[-1][0], (members, batch), generator=g)
        weights = [torch.randn(members, *shape, generator=g) / shape[1] ** 0.5 for shape in shapes]
        biases = [torch.randn(members, shape[0], generator=g) for shape in shapes]
        losses, weight_grads, bias_grads = _losses_and_grads(weights, biases, x, labels)
        exact = True
        for s in range(members):
            params = [t[s].clone().requires_grad_() for pair in zip(weights, biases) for t in pair]
            h = x[s]
            for k in range(len(shapes)):
                h = F.linear(h, params[2 * k], params[2 * k + 1])
                h = torch.relu(h) if k < len(shapes) - 1 else h
            loss = F.cross_entropy(h, labels[s])
            loss.backward()
            grads = [t[s] for pair in zip(weight_grads, bias_grads) for t in pair]
            exact = exact and torch.equal(loss, losses[s]) and all(torch.equal(p.grad, q) for p, q in zip(params, grads))
            if lr is not None:
                stacked = [t.clone() for pair in zip(weights, biases) for t in pair]
                torch._foreach_add_(stacked, [t for pair in zip(weight_grads, bias_grads) for t in pair], alpha=-lr)
                with torch.no_grad():
                    exact = exact and all(torch.equal(p.detach().add_(p.grad, alpha=-lr), t[s])
                                          for p, t in zip(params, stacked))
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


def _stacked_sgd_lr(members, stack: "_Stack") -> float | None:
    """The learning rate when every member steps with the same plain SGD over exactly its stacked layers (no
    other parameter, no global optimizer hook), so the update can run on the stacks; else None."""
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return None
    lrs = {_plain_sgd_lr(m) for m in members}
    if len(lrs) != 1 or None in lrs:
        return None
    if stack.owned is None:
        stack.owned = all(len(m.opt.param_groups[0]["params"]) == len(ls) * 2 and all(
            a is b for a, b in zip(m.opt.param_groups[0]["params"], [p for layer in ls for p in (layer.weight, layer.bias)]))
            for m, ls in zip(members, stack.layers))
    return lrs.pop() if stack.owned else None


class _Stack:
    """The members' linear layers with their weights moved into one stacked tensor per layer (each member's
    parameter is a view of its slice, so its own optimizer updates the stack in place and nothing is copied per
    step). :func:`release_stacks` gives every parameter its own storage back."""

    def __init__(self, members, layers: list[list[nn.Linear]]):
        self.members, self.layers = list(members), layers
        self.owned = None  # whether each member's optimizer steps exactly its stacked layers (see _stacked_sgd_lr)
        self.shapes = tuple(tuple(layer.weight.shape) for layer in layers[0])
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


def _stack_for(members, x: Tensor | None) -> _Stack | None:
    """The members' stack when their models are MLPs of one shape, fed ``x`` (their inputs stacked; None when
    the batches differ in shape), else None."""
    if len(members) < 2 or x is None or x.dtype != torch.float32 or x.device.type != "cpu" \
            or not all(m.model.training for m in members):
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
    return stack


def per_member(members, rng, fn, *args) -> list:
    """``[fn(m, *a) for each member]``, member ``i``'s call inside ``rng(i)`` (its own random draws)."""
    out = []
    for i, (m, *a) in enumerate(zip(members, *args)):
        with rng(i):
            out.append(fn(m, *a))
    return out


def converted_together(members, stored: list[Tensor], rng) -> Tensor | list[Tensor]:
    """The members' stored batches as network input: one ``(members, batch, ...)`` tensor converted in one call
    when every member's training transform is the same deterministic conversion (elementwise, so the values are
    those of converting each batch), else a list converted member by member, each inside ``rng(i)`` (its own
    random augmentation draws)."""
    first = members[0].ctx.train_transform
    convert = getattr(first, "converts_like", None)
    if convert is not None and len({x.shape for x in stored}) == 1 \
            and all(convert(m.ctx.train_transform) for m in members):
        joined = torch.stack(stored)
        return members[0].augment(joined.flatten(0, 1)).unflatten(0, joined.shape[:2])
    return per_member(members, rng, lambda m, x: m.augment(x), stored)


def grouped_cross_entropy_step(members, inputs: Tensor | list[Tensor], labels: list[Tensor]) -> list[Tensor]:
    """``[m.step(F.cross_entropy(m.model(x), y)) for m, x, y in zip(members, inputs, labels)]``, computed together
    when the members are MLPs of one shape fed batches of one shape (module docstring), else member by member.
    ``inputs``: the members' network inputs, a list or already stacked (:func:`converted_together`)."""
    if isinstance(inputs, Tensor):
        x = inputs
    else:
        x = torch.stack(inputs) if len({t.shape for t in inputs}) == 1 else None
    stack = _stack_for(members, x)
    lr = None if stack is None else _stacked_sgd_lr(members, stack)
    if stack is None or not grouped_step_is_exact(len(members), x.shape[1], stack.shapes, lr):
        return [m.step(F.cross_entropy(m.model(xi), y)) for m, xi, y in zip(members, inputs, labels)]
    from ..base import clear_grads, optimizer_step

    losses, weight_grads, bias_grads = _losses_and_grads(stack.weights, stack.biases, x.flatten(2), torch.stack(labels))
    if lr is not None:  # the members' plain SGD on the stacks: one add_ per tensor (probed equal to each member's)
        with torch.no_grad():
            torch._foreach_add_([*stack.weights, *stack.biases], [*weight_grads, *bias_grads], alpha=-lr)
    else:
        for m in members:
            clear_grads(m.opt)
        for s, ls in enumerate(stack.layers):
            for k, layer in enumerate(ls):
                layer.weight.grad, layer.bias.grad = weight_grads[k][s], bias_grads[k][s]
        for m in members:  # each member's own optimizer, stepped as a separate run steps it
            optimizer_step(m.opt)
    return losses
