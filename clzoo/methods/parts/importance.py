"""Parameter importance and the quadratic anchor penalty shared by EWC, online EWC, SI and MAS.

Every estimator returns one flat vector over the parameters it is given (the order of
:func:`param_vector`), so a method keeps its importance and anchor as two flat buffers of ``P`` floats each.

* :func:`fisher_diagonal` - diagonal Fisher information (EWC, Kirkpatrick et al. 2017; online EWC, Schwarz et
  al. 2018), from per-sample gradients of the log-likelihood computed with ``torch.func`` (``vmap`` over samples).
* :func:`mas_importance` - Memory Aware Synapses (Aljundi et al. 2018): the mean over samples of
  ``|d ||f(x)||^2 / d theta|``, per sample as in the paper's definition.
* :func:`quadratic_penalty` - ``sum_i importance_i (theta_i - anchor_i)^2``, the penalty all four share.

Synaptic Intelligence's path integral needs no estimator here: it is accumulated during training (see
``methods/regularization/si.py``) and only uses :func:`param_vector`, :func:`grad_vector` and the penalty.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

#: per-sample gradients are computed in chunks of at most this many floats (samples x parameters): 256 MB
CHUNK_FLOATS = 2**26


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


def per_sample_grads(model: nn.Module, fn: Callable[[Tensor, Tensor, Tensor], Tensor], inputs: Tensor,
                     targets: Tensor | None = None, chunk_size: int | None = None):
    """Yield ``(grads, outputs)`` per chunk of samples: ``grads`` is ``[n, P]``, the gradient of
    ``fn(logits_i, target_i)`` (a scalar per sample) with respect to the trainable parameters of ``model`` for
    each sample ``i`` of the chunk, and ``outputs`` the chunk's logits. Computed with ``torch.func`` (``vmap`` of
    ``grad`` of ``functional_call``); the model is used as it is (call ``model.eval()`` first for BatchNorm)."""
    named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    n_params = sum(p.numel() for p in named.values())
    chunk = chunk_size or max(1, CHUNK_FLOATS // max(n_params, 1))

    def sample_loss(params, x, t):
        logits = functional_call(model, {**params, **frozen, **buffers}, (x.unsqueeze(0),))
        return fn(logits.squeeze(0), t), logits.squeeze(0)

    per_sample = vmap(grad(sample_loss, has_aux=True), in_dims=(None, 0, 0 if targets is not None else None))
    for i in range(0, len(inputs), chunk):
        x = inputs[i:i + chunk]
        t = targets[i:i + chunk] if targets is not None else None
        grads, logits = per_sample(named, x, t)
        yield torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1), logits


def fisher_diagonal(model: nn.Module, inputs: Tensor, labels: Tensor, mode: str = "empirical",
                    chunk_size: int | None = None) -> Tensor:
    """Diagonal Fisher information of ``model`` on ``inputs`` (network input, already transformed), averaged
    over samples, as a flat vector over the trainable parameters.

    ``mode``:
      * ``empirical`` - ``mean_i g_i^2`` with ``g_i = d log p(y_i|x_i) / d theta`` at the true labels;
      * ``weighted``  - ``mean_i p(y_i|x_i) g_i^2``: the empirical Fisher weighted by the probability of the true
        label (mammoth's online EWC, ``models/ewc_on.py``);
      * ``expected``  - ``mean_i sum_c p(c|x_i) g_{i,c}^2``: the true Fisher, expectation over the model's own
        predictive distribution (one pass per class).
    """
    if mode not in ("empirical", "weighted", "expected"):
        raise ValueError(f"unknown Fisher mode '{mode}'; choose empirical, weighted or expected")

    def log_lik(logits, y):
        return F.log_softmax(logits, dim=-1)[y]

    total = None
    classes = range(_n_outputs(model, inputs)) if mode == "expected" else [None]
    for c in classes:
        targets = labels if c is None else torch.full_like(labels, c)
        for g, logits in per_sample_grads(model, log_lik, inputs, targets, chunk_size):
            if mode == "empirical":
                w = None
            else:
                probs = logits.detach().softmax(-1)
                w = probs.gather(1, targets[: len(g)].view(-1, 1) if False else _chunk_targets(targets, g, logits))
            part = g.pow(2) if w is None else w * g.pow(2)
            total = part.sum(0) if total is None else total + part.sum(0)
    return total / len(inputs)


def _chunk_targets(targets: Tensor, g: Tensor, logits: Tensor) -> Tensor:
    raise NotImplementedError


def _n_outputs(model: nn.Module, inputs: Tensor) -> int:
    with torch.no_grad():
        return model(inputs[:1]).shape[-1]


def mas_importance(model: nn.Module, inputs: Tensor, chunk_size: int | None = None) -> Tensor:
    """MAS importance on ``inputs`` (network input): ``mean_i |d ||f(x_i)||_2^2 / d theta|`` over samples, with
    ``f`` the model's output (logits), as a flat vector over the trainable parameters. Per sample, as the paper
    defines it (the official code takes the absolute value of a batch-summed gradient instead)."""

    def squared_norm(logits, _):
        return logits.pow(2).sum()

    total = None
    for g, _ in per_sample_grads(model, squared_norm, inputs, None, chunk_size):
        part = g.abs().sum(0)
        total = part if total is None else total + part
    return total / len(inputs)
