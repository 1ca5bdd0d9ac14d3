"""HyperInterval (HINT): a hypernetwork trained on interval embeddings with interval bound propagation.

Krukowski, Bielawska, Książek, Wawrzyński, Batorski, Spurek, "HyperInterval: Hypernetwork approach to training
weight interval regions in continual learning" (arXiv 2405.15444; later titled HINT). Official code:
pkrukowski1/HyperInterval@50bd82d. Built on :class:`~clzoo.methods.hypernet.hnet.HNET`:

* each task has an embedding ``e_t`` and a perturbation vector ``rho_t``; its *box* is ``[e_t - r_t, e_t + r_t]``
  with the radius ``r_t = epsilon * softmax(rho_t)`` (so the radii of one box sum to ``epsilon``);
* the box goes through the hypernetwork by IBP (``Hypernetwork.interval``), giving interval weights
  ``[theta_l, theta_u]`` with centre ``theta_m``, and through the target network by IBP
  (``TargetNet.interval``), giving lower / middle / upper logits ``z_l, z_m, z_u``;
* the task loss is ``kappa * CE(z_m, y) + (1 - kappa) * CE(z_worst, y)`` with ``z_worst`` = ``z_l`` at the true
  class and ``z_u`` elsewhere; over the first half of a task's steps ``kappa = max(1 - kappa_decay * step,
  kappa_min)`` and the radius grows linearly from 0 to ``epsilon``, afterwards ``kappa = kappa_min`` and the full
  ``epsilon`` (as the official training loop);
* the output regulariser holds the lower, middle and upper weights of every earlier box (at full ``epsilon``):
  ``R = 1/(3t) sum_{j<t} (||theta_l^j - theta_l^j*||^2 + ||theta_m^j - ...||^2 + ||theta_u^j - ...||^2)`` and the
  loss is ``task loss + beta * R``. **One beta normalisation:** ``R`` is divided by ``t`` once. The official code
  divides by ``t`` a second time (``beta * R / max(1, t)``, train_non_forced_classification_scenario.py), so its
  effective weight at task ``t`` is ``beta / t`` of ours;
* ``e_t`` and ``rho_t`` are frozen after task ``t``; the hypernetwork keeps training under ``R``.

Prediction: task-IL with the task's middle weights; without a task id the task whose middle prediction has the
lowest entropy (the official ``entropy.py``). **Nested mode** (``nested=true``, domain-IL or task-IL streams): the
embeddings enter as ``sigma * cos(e_t)`` with ``sigma = 0.5 * epsilon / M`` and radii
``r_t = sigma + 0.5 * epsilon * softmax(rho_t)`` (still summing to ``epsilon``, each at least ``sigma``), so every
box contains 0 and the boxes always intersect. The *universal embedding* is the centre of the intersection of the
trained tasks' boxes; by IBP its weights lie inside every task's weight interval, and they alone serve every task
(deploy-time size: one target network). The official radius is ``epsilon * softmax(rho_t)``, which does not
guarantee a common point once ``rho`` is trained; ours does.

Differences from the official code: no best-validation-iteration selection (the engine trains every step); the
interval-width term it computes but never adds to the loss is not computed; ``sigma`` uses the full ``epsilon``
(the official code scales it with the warm-up ``epsilon``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from .hnet import HNET
from ..registry import register_method


class HyperIntervalConfigError(ValueError):
    """HyperInterval's options do not fit the stream."""


@register_method("hyperinterval")
class HyperInterval(HNET):
    n_targets = 3

    def __init__(self, model, ctx, emb_dim: int = 72, hidden: list = [75, 75], chunk_size: int | None = None,
                 chunk_dim: int = 8, beta: float = 0.01, epsilon: float = 1.0, kappa_min: float = 0.5,
                 kappa_decay: float = 5e-5, nested: bool = False):
        self.epsilon, self.kappa_min, self.kappa_decay, self.nested = float(epsilon), float(kappa_min), float(kappa_decay), bool(nested)
        if self.nested and self.epsilon <= 0:
            raise HyperIntervalConfigError(
                f"hyperinterval: nested mode needs epsilon > 0 (got method.epsilon={epsilon}): with zero-width boxes the "
                f"tasks' embeddings have no common point and there is no universal embedding; set method.epsilon (the "
                f"paper's Split-MNIST value is 1.0) or method.nested=false")
        if self.epsilon < 0 or not 0 <= self.kappa_min <= 1:
            raise HyperIntervalConfigError(f"hyperinterval: need epsilon >= 0 and 0 <= kappa_min <= 1 (got "
                                           f"epsilon={epsilon}, kappa_min={kappa_min})")
        super().__init__(model, ctx, emb_dim, hidden, chunk_size, chunk_dim, beta)
        self.rho = tag_memory(nn.ParameterList(
            [nn.Parameter(torch.zeros(self.emb_dim)) for _ in range(ctx.stream.n_tasks)]), "per_task")
        self.needs_task_id = not self.nested

    def check_stream(self, info) -> None:
        if getattr(self, "nested", False) and info.scenario == "class_il":
            raise HyperIntervalConfigError(
                "hyperinterval: nested mode predicts with one universal embedding, which cannot tell tasks apart, so it "
                "cannot do class-IL; use a task-IL or domain-IL stream (e.g. stream.scenario=task_il) or "
                "method.nested=false (class-IL by minimum entropy over the task embeddings)")

    # ------------------------------------------------------------------ boxes
    def sigma(self) -> float:
        return 0.5 * self.epsilon / self.emb_dim

    def box(self, task_ids: list[int], eps: float | None = None) -> tuple[Tensor, Tensor]:
        """Centres and radii of the tasks' embedding boxes at radius scale ``eps`` (default: ``epsilon``)."""
        eps = self.epsilon if eps is None else eps
        e = torch.stack([self.embeddings[t] for t in task_ids])
        soft = F.softmax(torch.stack([self.rho[t] for t in task_ids]), dim=-1)
        if self.nested:
            frac = eps / self.epsilon
            return self.sigma() * torch.cos(e), frac * (self.sigma() + 0.5 * self.epsilon * soft)
        return e, eps * soft

    def universal_embedding(self, task_ids: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Lower end, centre and upper end of the intersection of the tasks' boxes (nested mode)."""
        tasks = self.trained_tasks() if task_ids is None else task_ids
        c, r = self.box(tasks)
        lo, hi = (c - r).max(0).values, (c + r).min(0).values
        return lo, (lo + hi) / 2, hi

    # ------------------------------------------------------------------ training
    def schedule(self) -> tuple[float, float]:
        """(kappa, epsilon) at the current step of the task: warm-up over the first half of its steps."""
        warm = self.steps_in_task // 2
        it = self.step_in_task
        if it < warm:
            return max(1.0 - self.kappa_decay * it, self.kappa_min), self.epsilon * it / max(warm - 1, 1)
        return self.kappa_min, self.epsilon

    def task_loss(self, x, y_local, task_id):
        kappa, eps = self.schedule()
        w_lo, w_mid, w_hi = self.hnet.interval(*self.box([task_id], eps))
        z_lo, z_mid, z_hi = self.target.interval(x, w_lo[0], w_mid[0], w_hi[0])
        loss = F.cross_entropy(z_mid, y_local)
        if kappa < 1.0:
            worst = torch.where(F.one_hot(y_local, z_mid.shape[1]).bool(), z_lo, z_hi)
            loss = kappa * loss + (1.0 - kappa) * F.cross_entropy(worst, y_local)
        return loss

    def generate_targets(self, n_tasks: int) -> Tensor:
        return torch.stack(self.hnet.interval(*self.box(list(range(n_tasks)))), dim=1)

    def start_task(self, task):
        for t, r in enumerate(self.rho):
            r.requires_grad_(t == task.id)
        super().start_task(task)

    def trainable_parameters(self):
        return [*super().trainable_parameters(), self.rho[max(self.current_task, 0)]]

    # ------------------------------------------------------------------ inference
    def eval_weights(self, task_ids):
        return self.hnet.interval(*self.box(task_ids))[1]

    def forward(self, x, task_id=None):
        if not self.nested or not self.trained_tasks():
            return super().forward(x, task_id)
        if task_id is None and self.ctx.stream.scenario != "domain_il":
            return super().forward(x, None)  # task-agnostic on task-specific labels: minimum entropy over the boxes
        theta = self.hnet(self.universal_embedding()[1][None])[0]
        out = x.new_full((x.shape[0], self.ctx.stream.n_classes), float("-inf"))
        self.place(out, self.target(x, theta), 0 if task_id is None else task_id)
        return out

    def memory_report(self, ledger) -> dict:
        report = super().memory_report(ledger)
        if self.nested:
            report["deploy_bytes"] = self.target.n_params * 4
            report["deploy"] = "the weights generated from the universal embedding (one target network, float32)"
        return report
