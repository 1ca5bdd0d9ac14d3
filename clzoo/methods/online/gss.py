"""GSS-Greedy: Gradient-based Sample Selection.

Aljundi, Lin, Goujaud & Bengio, "Gradient based sample selection for online continual learning", NeurIPS 2019
(official code: rahafaljundi/Gradient-based-Sample-Selection, ``model/GSS_Greedy.py``). The buffer keeps samples
whose gradients point in diverse directions. Each stored sample carries a score, the largest cosine between its
gradient and the gradients of ``memory_strength`` random buffer minibatches (high = redundant). Per incoming
batch:

1. ``n_iter`` times: one SGD step on the incoming batch, then one on a buffer minibatch of ``minibatch_size``
   (two separate steps, as the official code).
2. Admission. While the buffer has room, the batch is stored with its per-sample scores (the very first batch
   with score 0.1). Once it is full, the gradient of the whole incoming batch is compared with the buffer
   minibatch gradients; if its largest cosine is below ``change_threshold`` (0), ``|batch|`` replacement candidates
   are drawn from the buffer with probability proportional to their min-max normalised scores, and each incoming
   sample ``i`` replaces its candidate ``j`` with probability ``(c_j + 1) / 2 / ((c_i + 1) / 2 + (c_j + 1) / 2)``.

Per-sample gradient cosines come, for networks of linear layers, from one forward / backward without building
the per-sample gradients (``per_sample: factored``, :mod:`..parts.factored_grads`), otherwise from ``torch.func``
(``vmap`` over the batch); never a loop over samples (bench/online.py measures both against the official loop). Memory:
the buffer (uint8 inputs, labels, task ids) plus one float32 score per slot (``exemplar_extras``); the official
code keeps float32 inputs (4x the bytes per MNIST image). Differences from the official code: the buffer never
overflows its capacity (the official appends a whole batch to a buffer one sample short of full), candidate
weights get a tiny floor when fewer than ``|batch|`` slots have a non-zero normalised score (the official
``torch.multinomial`` would fail there), and scoring uses the evaluation transform (no augmentation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import Method
from ..parts.factored_grads import linear_grad_similarity
from ..parts.importance import per_sample_grads
from ..registry import register_method


def flat_grads(grads: dict[str, Tensor]) -> Tensor:
    """Per-sample gradients ``{name: [n, *shape]}`` as one ``[n, P]`` matrix."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def max_cosine(g: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """For each row of ``g`` [n, P], the largest cosine similarity to a row of ``reference`` [k, P]."""
    norms = g.norm(dim=1, keepdim=True) * reference.norm(dim=1).unsqueeze(0)
    return ((g @ reference.t()) / norms.clamp_min(eps)).max(dim=1).values


def max_cosine_per_tensor(grads: dict[str, Tensor], reference: Tensor, eps: float = 1e-8) -> Tensor:
    """:func:`max_cosine` of the per-sample gradients ``{name: [n, *shape]}`` (flattened in order) without
    concatenating them: dot products and squared norms are summed tensor by tensor (no [n, P] copy)."""
    dots, squares, offset = 0.0, 0.0, 0
    for g in grads.values():
        rows = g.reshape(g.shape[0], -1)
        part = reference[:, offset:offset + rows.shape[1]]
        offset += rows.shape[1]
        dots = dots + rows @ part.t()
        squares = squares + rows.pow(2).sum(1)
    norms = squares.sqrt().unsqueeze(1) * reference.norm(dim=1).unsqueeze(0)
    return (dots / norms.clamp_min(eps)).max(dim=1).values


@register_method("gss")
class GSS(Method):
    supports_task_free = True  # the task id is only stored (task-free: -1)

    def __init__(self, model, ctx, buffer: dict | int | str = 300, minibatch_size: int = 10,
                 memory_strength: int = 10, n_iter: int = 3, change_threshold: float = 0.0,
                 per_sample: str = "factored"):
        super().__init__(model, ctx)
        if per_sample not in ("factored", "vmap"):
            raise ValueError(f"gss: method.per_sample must be 'factored' or 'vmap', got {per_sample!r}")
        self.per_sample = per_sample
        if minibatch_size < 1 or memory_strength < 1 or n_iter < 1:
            raise ValueError(f"gss: minibatch_size, memory_strength and n_iter must be >= 1, got {minibatch_size}, "
                             f"{memory_strength}, {n_iter}")
        self.minibatch_size, self.memory_strength, self.n_iter = minibatch_size, memory_strength, n_iter
        self.change_threshold = change_threshold
        self.buffer = self.make_buffer(buffer, extra_bytes_per_sample=4)
        self.register_buffer("scores", torch.zeros(self.buffer.capacity, device=self.buffer.x.device))
        self.memory_categories = {"scores": "exemplar_extras"}

    # ------------------------------------------------------------------ gradients
    def _params(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def batch_gradient(self, x: Tensor, y: Tensor) -> Tensor:
        """Gradient of the mean cross-entropy on network input ``x`` as one flat vector."""
        loss = F.cross_entropy(self.model(x), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self._params())])

    def buffer_gradients(self) -> Tensor:
        """Gradients of ``memory_strength`` random buffer minibatches (consecutive slices of one permutation,
        fewer when the buffer runs out), ``[k, P]``."""
        n = len(self.buffer)
        size = min(self.minibatch_size, n)
        order = torch.randperm(n, device=self.buffer.x.device)
        grads = []
        for k in range(self.memory_strength):
            if k * size >= n:
                break
            batch = self.buffer.get(order[k * size:(k + 1) * size])
            grads.append(self.batch_gradient(self.preprocess(batch.x), batch.y))
        return torch.stack(grads)

    def sample_scores(self, x: Tensor, y: Tensor, reference: Tensor) -> Tensor:
        """Score of each sample of network input ``x``: max cosine of its own gradient to ``reference``. With
        ``per_sample="factored"`` a network of linear layers gets the cosines from one forward / backward
        (:mod:`..parts.factored_grads`, the same numbers up to float rounding); other networks, or ``"vmap"``,
        use ``torch.func`` per-sample gradients."""
        if self.per_sample == "factored":
            found = linear_grad_similarity(self.model, lambda logits, t: F.cross_entropy(logits, t, reduction="sum"),
                                           x, y, reference)
            if found is not None:
                dots, squares = found
                norms = squares.sqrt().unsqueeze(1) * reference.norm(dim=1).unsqueeze(0)
                return (dots / norms.clamp_min(1e-8)).max(dim=1).values
        grads, _ = per_sample_grads(self.model, lambda logits, t: F.cross_entropy(logits.unsqueeze(0), t.view(1)),
                                    x, y)
        return max_cosine_per_tensor(grads, reference)

    # ------------------------------------------------------------------ the step
    def observe(self, x, y, task_id):
        replay_order = torch.randperm(len(self.buffer), device=self.buffer.x.device) if len(self.buffer) else None
        size = min(self.minibatch_size, len(self.buffer))
        for it in range(self.n_iter):
            loss = self.step(F.cross_entropy(self.model(self.augment(x)), y))
            if replay_order is not None:  # cycle through one shuffle of the buffer, as the official code
                start = (it * size) % len(self.buffer)
                batch = self.buffer.get(replay_order[start:start + size])
                self.step(F.cross_entropy(self.model(self.augment(batch.x)), batch.y))
        self.admit(x, y, task_id)
        return loss

    def admit(self, x: Tensor, y: Tensor, task_id) -> None:
        was_training = self.model.training
        self.model.eval()
        filled, capacity = len(self.buffer), self.buffer.capacity
        device = self.buffer.x.device
        if filled == 0:  # first insertion: a constant score, as the official code
            n = min(len(y), capacity)
            self.buffer.put(torch.arange(n, device=device), x[:n], y[:n], task_id)
            self.scores[:n] = 0.1
        else:
            reference = self.buffer_gradients()
            inputs = self.preprocess(x)
            if filled < capacity:
                n = min(len(y), capacity - filled)
                self.buffer.put(torch.arange(filled, filled + n, device=device), x[:n], y[:n], task_id)
                self.scores[filled:filled + n] = self.sample_scores(inputs[:n], y[:n], reference)
            else:
                batch_sim = max_cosine(self.batch_gradient(inputs, y).unsqueeze(0), reference)[0]
                if batch_sim < self.change_threshold:
                    self.replace(x, y, task_id, self.sample_scores(inputs, y, reference))
        self.buffer.n_seen += len(y)
        self.model.train(was_training)

    def replace(self, x: Tensor, y: Tensor, task_id, new_scores: Tensor) -> None:
        """Score-weighted replacement of the official code (see the module docstring)."""
        scores = self.scores
        weights = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)
        if int((weights > 0).sum()) < len(y):
            weights = weights + 1e-6
        candidates = torch.multinomial(weights, len(y), replacement=False)
        odds = torch.stack([(new_scores + 1) / 2, (scores[candidates] + 1) / 2], dim=1)
        replace = torch.multinomial(odds, 1).squeeze(1) == 1
        rows = replace.nonzero().squeeze(1)
        if len(rows):
            slots = candidates[rows]
            task = task_id if not isinstance(task_id, Tensor) else task_id[rows]
            self.buffer.put(slots, x[rows], y[rows], task)
            self.scores[slots] = new_scores[rows]
