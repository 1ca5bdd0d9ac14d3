"""Parameter importance and the quadratic anchor penalty shared by EWC, online EWC, SI and MAS.

Every estimator returns one flat vector over the model's trainable parameters, in the order of
:func:`regularized_parameters` / :func:`param_vector`, so a method keeps its importance and anchor as two flat
buffers of ``P`` floats each.

* :func:`fisher_diagonal` - diagonal Fisher information (EWC, Kirkpatrick et al. 2017; online EWC, Schwarz et
  al. 2018), from per-sample gradients of the log-likelihood computed with ``torch.func`` (``vmap`` over samples).
* :func:`mas_importance` - Memory Aware Synapses (Aljundi et al. 2018): the mean over samples of
  ``|d ||f(x)||^2 / d theta|``, per sample as in the paper's definition.
* :func:`quadratic_penalty` - ``sum_i importance_i (theta_i - anchor_i)^2``, the penalty all four share.

Synaptic Intelligence's path integral needs no estimator here: it is accumulated during training (see
``methods/regularization/si.py``) and only uses :func:`param_vector`, :func:`grad_vector` and the penalty.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

#: per-sample gradients are computed in chunks of at most this many floats (samples x parameters): 16 MB, cache-friendly
CHUNK_FLOATS = 2**22


def regularized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a penalty acts on: every trainable parameter of ``model``, in registration order."""
    return [p for p in model.parameters() if p.requires_grad]


def param_vector(params: Iterable[Tensor]) -> Tensor:
    """The parameters as one flat vector (differentiable: a penalty on it back-propagates into the parameters)."""
    return torch.cat([p.reshape(-1) for p in params])


def grad_vector(params: Iterable[Tensor]) -> Tensor:
    """The parameters' ``.grad`` as one flat vector (zeros where a parameter has no gradient)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def quadratic_penalty(theta: Tensor, importance: Tensor, anchor: Tensor) -> Tensor:
    """``sum_i importance_i * (theta_i - anchor_i)^2`` (``theta`` from :func:`param_vector`)."""
    return (importance * (theta - anchor).pow(2)).sum()


def per_sample_grads(model: nn.Module, fn: Callable[[Tensor, Tensor | None], Tensor], inputs: Tensor,
                     targets: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Gradients of ``fn(logits_i, target_i)`` (a scalar per sample) with respect to the trainable parameters of
    ``model``, one per sample: ``({name: [n, *shape]}, [n, C] logits)``. Computed with ``torch.func`` (``vmap``
    of ``grad`` of ``functional_call``), no loop over samples; the model is used in its current mode (call
    ``model.eval()`` first when it has BatchNorm). Use :func:`sample_chunks` to bound memory."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update(model.named_buffers())

    def sample_loss(params, x, t):
        logits = functional_call(model, {**params, **constants}, (x.unsqueeze(0),)).squeeze(0)
        return fn(logits, t), logits

    in_dims = (None, 0, 0 if targets is not None else None)
    return vmap(grad(sample_loss, has_aux=True), in_dims=in_dims)(params, inputs, targets)


def sample_chunks(model: nn.Module, n: int, chunk_size: int | None = None) -> list[slice]:
    """Slices of ``n`` samples small enough that a chunk of per-sample gradients stays under CHUNK_FLOATS."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = chunk_size or max(1, CHUNK_FLOATS // max(n_params, 1))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _apply(transform: Callable[[Tensor], Tensor] | None, x: Tensor) -> Tensor:
    return transform(x) if transform is not None else x


def _log_likelihood(logits: Tensor, y: Tensor) -> Tensor:
    return F.log_softmax(logits, dim=-1).gather(-1, y.view(1)).squeeze(-1)


def fisher_diagonal(model: nn.Module, inputs: Tensor, labels: Tensor, mode: str = "empirical",
                    transform: Callable[[Tensor], Tensor] | None = None, chunk_size: int | None = None) -> Tensor:
    """Diagonal Fisher information of ``model`` on ``inputs`` (network input, or stored data turned into network
    input chunk by chunk by ``transform``), averaged over samples, as a flat vector over the trainable parameters.

    ``mode``:
      * ``empirical`` - ``mean_i g_i^2`` with ``g_i = d log p(y_i|x_i) / d theta`` at the true labels;
      * ``weighted``  - ``mean_i p(y_i|x_i) g_i^2``: the empirical Fisher weighted by the probability of the true
        label (mammoth's online EWC, ``models/ewc_on.py``);
      * ``expected``  - ``mean_i sum_c p(c|x_i) g_{i,c}^2``: the true Fisher, an expectation over the model's
        own predictive distribution (one pass per output class).
    """
    if mode not in ("empirical", "weighted", "expected"):
        raise ValueError(f"unknown Fisher mode '{mode}'; choose empirical, weighted or expected")
    total: dict[str, Tensor] = {}
    for chunk in sample_chunks(model, len(inputs), chunk_size):
        x, y = _apply(transform, inputs[chunk]), labels[chunk]
        if mode == "expected":
            with torch.no_grad():
                probs = model(x).softmax(-1)
            targets = [torch.full_like(y, c) for c in range(probs.shape[1])]
        else:
            targets = [y]
        for t in targets:
            grads, logits = per_sample_grads(model, _log_likelihood, x, t)
            if mode == "weighted":
                probs = logits.detach().softmax(-1)
            w = None if mode == "empirical" else probs.gather(1, t.view(-1, 1)).squeeze(1)
            for name, g in grads.items():
                part = g.pow(2).sum(0) if w is None else torch.tensordot(w, g.pow(2), dims=1)
                total[name] = total[name] + part if name in total else part
    return _flatten(total) / len(inputs)


def mas_importance(model: nn.Module, inputs: Tensor, transform: Callable[[Tensor], Tensor] | None = None,
                   chunk_size: int | None = None) -> Tensor:
    """MAS importance on ``inputs`` (network input, or stored data and its ``transform`` as in
    :func:`fisher_diagonal`): ``mean_i |d ||f(x_i)||_2^2 / d theta|`` over samples, with ``f`` the model's output
    (logits), as a flat vector over the trainable parameters. Per sample, as the paper defines it (the official
    code takes the absolute value of a batch-summed gradient instead)."""

    def squared_norm(logits, _):
        return logits.pow(2).sum()

    total: dict[str, Tensor] = {}
    for chunk in sample_chunks(model, len(inputs), chunk_size):
        grads, _ = per_sample_grads(model, squared_norm, _apply(transform, inputs[chunk]))
        for name, g in grads.items():
            part = g.abs().sum(0)
            total[name] = total[name] + part if name in total else part
    return _flatten(total) / len(inputs)


def _flatten(per_param: dict[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in per_param.values()])


def warn_if_stiff(method, importance: Tensor, weight: float) -> None:
    """Warn, when ``method`` has tasks left to train with plain SGD, that the penalty
    ``weight * importance_k * (theta_k - anchor_k)^2`` is too stiff for its learning rate: each SGD step multiplies
    ``theta_k - anchor_k`` by ``1 - 2 * lr * weight * importance_k``, which diverges once ``lr * weight *
    importance_k > 1``."""
    optimizer, stream = method.ctx.optimizer, method.ctx.stream
    if optimizer.get("name", "sgd") != "sgd" or method.current_task + 1 >= stream.n_tasks or importance.numel() == 0:
        return
    stiffness = float(optimizer.get("lr", 0.0)) * weight * float(importance.max())
    if stiffness > 1.0:
        warnings.warn(f"{method.method_name}: lr * weight * max(importance) = {stiffness:.2f} > 1 after task "
                      f"{method.current_task}: SGD steps on the penalty overshoot and the next task will likely "
                      f"diverge; lower the penalty weight or the learning rate", RuntimeWarning, stacklevel=2)
