"""Task-free MAS: Memory Aware Synapses without task boundaries.

Aljundi, Kelchtermans & Tuytelaars, "Task-Free Continual Learning", CVPR 2019 (official code:
kkelchte/task_free_continual_learning, ``method.py``). MAS's importance is consolidated when the loss *plateaus*
instead of at task ends:

* a **recent buffer** holds the last ``recent_size`` stream samples (a sliding window); each incoming batch is
  followed by ``gradient_steps`` SGD steps on recent + **hard buffer**, the ``hard_size`` samples of highest loss
  among the two, chosen again after every update;
* the loss is ``mean CE(recent and hard) + (lambda_ / 2) * sum_k Omega_k (theta_k - theta*_k)^2``;
* **plateau detection** on a window of the last ``window`` first-step losses: importance is updated when the
  window's mean is below ``mean_threshold``, its variance below ``variance_threshold``, and a new peak (a window
  mean above the last update's mean + its standard deviation) was seen since the last update;
* importance update: ``g = sum over the hard buffer of |d ||f(x)||_2 / d theta|`` (per sample, unsquared norm, with
  ``torch.func``), ``Omega <- g / n + (1 - 1/n) Omega`` at the n-th update (a running average), and the anchor
  ``theta* <- theta`` at every update.

It never reads the task id, so it runs task-free (``stream.task_free=true``) and with boundaries alike.
Memory: Omega and theta* (2 x P floats, ``importance``), the two buffers (uint8 inputs), and the detector's state
(a few floats). Differences from the official code, which trains on one sample at a time with an MSE loss on
one-hot targets and sums the per-sample losses: the window slides by one stream batch (``trainer.batch_size``), the
loss is the mean cross-entropy (the thresholds, tuned on the official MSE scale, are options), and the hard
buffer is chosen from the losses of the last update step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Method
from ..parts.importance import (param_vector, per_sample_grads, quadratic_penalty, regularized_parameters,
                                sample_chunks)
from ..registry import register_method


class PlateauDetector(nn.Module):
    """The official loss-plateau rule; all state in buffers (checkpointed)."""

    def __init__(self, window: int = 5, mean_threshold: float = 0.2, variance_threshold: float = 0.1):
        super().__init__()
        if window < 1:
            raise ValueError(f"tf_mas: the loss window needs >= 1 entries, got {window}")
        self.mean_threshold, self.variance_threshold = mean_threshold, variance_threshold
        self.register_buffer("losses", torch.zeros(window, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))      # losses seen (window fill)
        self.register_buffer("last", torch.zeros(2, dtype=torch.float64))      # mean, variance at the last update
        self.register_buffer("new_peak", torch.ones((), dtype=torch.bool))

    def update(self, loss: float) -> bool:
        """Add one loss; True when the importance should be updated now."""
        window = len(self.losses)
        self.losses.copy_(torch.roll(self.losses, -1))
        self.losses[-1] = loss
        self.count += 1
        values = self.losses[-min(int(self.count), window):]
        mean, var = float(values.mean()), float(values.var(unbiased=False))
        if not bool(self.new_peak) and mean > float(self.last[0]) + float(self.last[1]) ** 0.5:
            self.new_peak.fill_(True)
        if mean < self.mean_threshold and var < self.variance_threshold and bool(self.new_peak):
            self.last.copy_(torch.tensor([mean, var], dtype=torch.float64))
            self.new_peak.fill_(False)
            return True
        return False


def output_norm_importance(model: nn.Module, inputs: Tensor) -> Tensor:
    """``sum_i |d ||f(x_i)||_2 / d theta|`` over the samples of ``inputs`` (per sample, the unsquared norm)."""
    total = None
    for chunk in sample_chunks(model, len(inputs)):
        grads, _ = per_sample_grads(model, lambda logits, _: logits.norm(), inputs[chunk])
        part = torch.cat([g.abs().sum(0).reshape(-1) for g in grads.values()])
        total = part if total is None else total + part
    return total


@register_method("tf_mas")
class TaskFreeMAS(Method):
    supports_task_free = True

    def __init__(self, model, ctx, lambda_: float = 0.5, recent_size: int = 30, hard_size: int = 30,
                 gradient_steps: int = 5, window: int = 5, mean_threshold: float = 0.2,
                 variance_threshold: float = 0.1):
        super().__init__(model, ctx)
        if recent_size < 1 or hard_size < 0 or gradient_steps < 1:
            raise ValueError(f"tf_mas: need recent_size >= 1, hard_size >= 0, gradient_steps >= 1; got "
                             f"{recent_size}, {hard_size}, {gradient_steps}")
        self.lambda_, self.gradient_steps = lambda_, gradient_steps
        n = param_vector(regularized_parameters(model)).numel()
        self.register_buffer("importance", torch.zeros(n))
        self.register_buffer("anchor", torch.zeros(n))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self.memory_categories = {"importance": "importance", "anchor": "importance", "n_updates": "importance"}
        self.plateau = PlateauDetector(window, mean_threshold, variance_threshold)
        self.recent = self.make_buffer(recent_size)
        self.hard = self.make_buffer(max(hard_size, 1))
        self.hard_size = hard_size

    def observe(self, x, y, task_id):
        task = torch.full((len(y),), -1 if task_id is None else task_id, dtype=torch.int16, device=y.device)
        # the recent buffer slides: the last recent_size samples of the stream
        old = self.recent.all()
        xs, ys = torch.cat([old.x, x])[-self.recent.capacity:], torch.cat([old.y, y])[-self.recent.capacity:]
        ts = torch.cat([old.task.to(task.dtype), task])[-self.recent.capacity:]
        self.recent.set_contents(xs, ys, ts)
        if len(self.recent) < self.recent.capacity:  # train once the recent buffer is full, as the official code
            with torch.no_grad():
                return F.cross_entropy(self.model(self.augment(x)), y)
        batch = self.recent.all()
        if len(self.hard) and self.hard_size:
            hard = self.hard.all()
            inputs_x, inputs_y = torch.cat([batch.x, hard.x]), torch.cat([batch.y, hard.y])
            inputs_t = torch.cat([batch.task, hard.task])
        else:
            inputs_x, inputs_y, inputs_t = batch.x, batch.y, batch.task
        first = None
        for step in range(self.gradient_steps):
            per_sample = F.cross_entropy(self.model(self.augment(inputs_x)), inputs_y, reduction="none")
            loss = per_sample.mean()
            if step == 0:
                first = loss.item()
            if int(self.n_updates) > 0:
                loss = loss + self.lambda_ / 2 * quadratic_penalty(param_vector(regularized_parameters(self.model)),
                                                                   self.importance, self.anchor)
            self.step(loss)
        if self.plateau.update(first):
            self.consolidate()
        if self.hard_size:  # the hardest samples of recent + hard, by the losses of the last step
            top = per_sample.detach().argsort(descending=True)[: self.hard_size]
            self.hard.set_contents(inputs_x[top], inputs_y[top], inputs_t[top])
        return torch.tensor(first)

    def consolidate(self) -> None:
        """One importance update on the hard buffer (running average over updates) and a new anchor."""
        source = self.hard.all() if len(self.hard) and self.hard_size else self.recent.all()
        was_training = self.model.training
        self.model.eval()
        g = output_norm_importance(self.model, self.preprocess(source.x))
        self.model.train(was_training)
        self.n_updates += 1
        n = int(self.n_updates)
        self.importance.mul_(1 - 1 / n).add_(g / n)
        self.anchor.copy_(param_vector(regularized_parameters(self.model)).detach())
