"""HNET: task-conditioned hypernetworks.

von Oswald, Henning, Grewe, Sacramento, "Continual learning with hypernetworks", ICLR 2020 (official code:
chrhenning/hypercl). A hypernetwork ``H`` maps a learnt embedding ``e_t`` of each task to *all* weights of a target
network, ``theta_t = H(e_t)``. Training task ``t`` updates ``H`` and ``e_t`` on

    CE(f(x; H(e_t)), y) + beta * (1/t) * sum_{j < t} || H(e_j) - theta*_j ||^2,

where ``theta*_j = H(e_j)`` as ``H`` was just before task ``t`` (the output regulariser keeps every earlier task's
generated weights where they were). Earlier embeddings are frozen. Each task has its own output units (the target
network ends with ``max classes per task`` logits, labels relative to the task), so predicting needs a task: given
(task-IL), or inferred as the task whose prediction has the lowest entropy (HNET+ENT, the paper's CL3 setting).

The target network is the run's model (``model=mlp`` or ``model=lenet``) with a new output layer; the model's own
weights are not used or kept. Memory (ledger): ``H`` under ``generator``, the embeddings under ``per_task`` (one per
task of the stream, allocated up front), the regulariser targets ``theta*_j`` under ``teachers`` (one weight vector
per finished task, taken at the end of each task). The regulariser runs all earlier embeddings through ``H`` as one
batch, so ``H``'s weights are read once per step whatever the number of tasks (bench/bench_hypernet.py).
Not implemented: the paper's optional look-ahead (``Delta Theta``) term, chunking by default (``chunk_size``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from ..base import Method
from ..parts.hypernet import Hypernetwork, TargetNet, min_entropy_task
from ..registry import register_method


@register_method("hnet")
class HNET(Method):
    needs_task_id = True  # per-task embeddings; without a task id the task is inferred by minimum entropy
    transient_state = ("local_label",)  # derived from ctx.stream.task_classes
    #: regulariser targets kept per finished task (HNET: the generated weights; HyperInterval: lower, middle, upper)
    n_targets = 1

    def __init__(self, model, ctx, emb_dim: int = 72, hidden: list = [75, 75], chunk_size: int | None = None,
                 chunk_dim: int = 8, beta: float = 0.01):
        super().__init__(model, ctx)
        info = ctx.stream
        name = self.method_name or type(self).__name__.lower()
        self.check_stream(info)
        self.emb_dim, self.beta = int(emb_dim), float(beta)
        width = max(len(c) for c in info.task_classes)
        self.target = TargetNet(model, width, tuple(info.input_shape), owner=name)
        self.model = None  # the run's model gives the architecture only: every weight is generated
        self.hnet = tag_memory(Hypernetwork(self.emb_dim, self.target.n_params, tuple(int(h) for h in hidden),
                                            chunk_size, chunk_dim, init_output=self.target.init_vector()), "generator")
        self.embeddings = tag_memory(nn.ParameterList(
            [nn.Parameter(torch.randn(self.emb_dim)) for _ in range(info.n_tasks)]), "per_task")
        self.register_buffer("reg_targets", torch.zeros(0, self.n_targets, self.target.n_params))
        self.memory_categories = {"reg_targets": "teachers"}
        # label -> position among its task's classes, and back (derived from the stream: not state)
        local = torch.zeros(info.n_classes, dtype=torch.long)
        for classes in info.task_classes:
            local[torch.tensor(classes)] = torch.arange(len(classes))
        self.register_buffer("local_label", local, persistent=False)
        self.step_in_task, self.steps_in_task = 0, 1

    def check_stream(self, info) -> None:
        """Errors for streams this method cannot serve (raised before training)."""

    # ------------------------------------------------------------------ task boundaries
    def start_task(self, task):
        for t, e in enumerate(self.embeddings):
            e.requires_grad_(t == task.id)  # earlier (and later) embeddings stay as they are
        n = len(task.y_train)
        epochs = self.ctx.epochs_of(task.id)
        self.steps_in_task, self.step_in_task = max(epochs * -(-n // self.ctx.batch_size), 1), 0
        super().start_task(task)

    def trainable_parameters(self):
        return [*self.hnet.parameters(), self.embeddings[max(self.current_task, 0)]]

    def end_task(self, task):
        with torch.no_grad():
            self.reg_targets = self.generate_targets(task.id + 1).detach().clone()

    # ------------------------------------------------------------------ the hypernetwork's outputs
    def weights(self, task_ids: list[int]) -> Tensor:
        """Generated target weights of the given tasks, ``[len(task_ids), P]``."""
        return self.hnet(torch.stack([self.embeddings[t] for t in task_ids]))

    def generate_targets(self, n_tasks: int) -> Tensor:
        """What the regulariser holds tasks ``0..n_tasks-1`` to, ``[n_tasks, n_targets, P]``."""
        return self.weights(list(range(n_tasks))).unsqueeze(1)

    def regulariser(self, task_id: int) -> Tensor:
        """``(1/t) sum_{j<t} ||H(e_j) - theta*_j||^2``, all earlier tasks in one batch through ``H``."""
        if task_id == 0 or self.reg_targets.shape[0] < task_id:
            return torch.zeros((), device=self.reg_targets.device)
        outputs = self.generate_targets(task_id)
        return (outputs - self.reg_targets[:task_id]).pow(2).sum() / (task_id * self.n_targets)

    # ------------------------------------------------------------------ training
    def task_loss(self, x: Tensor, y_local: Tensor, task_id: int) -> Tensor:
        return F.cross_entropy(self.target(x, self.weights([task_id])[0]), y_local)

    def observe(self, x, y, task_id):
        loss = self.task_loss(self.augment(x), self.local_label[y], task_id)
        if task_id > 0 and self.beta:
            loss = loss + self.beta * self.regulariser(task_id)
        self.step_in_task += 1
        return self.step(loss)

    # ------------------------------------------------------------------ inference
    def eval_weights(self, task_ids: list[int]) -> Tensor:
        """The weights a task is evaluated with."""
        return self.weights(task_ids)

    def trained_tasks(self) -> list[int]:
        return list(range(self.current_task + 1))

    def place(self, out: Tensor, local_logits: Tensor, task_id: int, rows: Tensor | None = None) -> None:
        """Write a task's local logits onto its classes of the stream-wide output ``out``."""
        classes = torch.tensor(self.ctx.stream.task_classes[task_id], device=out.device)
        k = len(classes)
        if rows is None:
            out[:, classes] = local_logits[:, :k]
        else:
            out[rows.nonzero().squeeze(1)[:, None], classes[None, :]] = local_logits[rows][:, :k]

    def forward(self, x, task_id=None):
        n_classes = self.ctx.stream.n_classes
        tasks = self.trained_tasks() if task_id is None else [task_id]
        if not tasks:  # nothing trained yet: no opinion
            return x.new_zeros(x.shape[0], n_classes)
        thetas = self.eval_weights(tasks)
        logits = [self.target(x, theta) for theta in thetas]
        out = x.new_full((x.shape[0], n_classes), float("-inf"))
        if len(tasks) == 1:
            self.place(out, logits[0], tasks[0])
            return out
        chosen = min_entropy_task(logits)
        for i, t in enumerate(tasks):
            self.place(out, logits[i], t, rows=chosen == i)
        return out

    # ------------------------------------------------------------------ memory report and resume
    def memory_report(self, ledger) -> dict:
        """Totals with and without the generator and the deploy-time size (stored in results.json)."""
        gen = ledger.by_category.get("generator", 0)
        n_trained = len(self.trained_tasks())
        weights = self.target.n_params * 4
        return {"generator_bytes": gen, "total_with_generator_bytes": ledger.total_bytes,
                "total_without_generator_bytes": ledger.total_bytes - gen,
                "target_params": self.target.n_params, "generator_params": sum(p.numel() for p in self.hnet.parameters()),
                "deploy_bytes": n_trained * weights,
                "deploy": f"the generated weights of the {n_trained} trained tasks (float32); keeping the generator "
                          f"and the embeddings instead would take {gen + ledger.by_category.get('per_task', 0):,} bytes"}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "reg_targets" in state_dict:
            self.reg_targets = torch.empty_like(state_dict["reg_targets"], device=self.reg_targets.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
