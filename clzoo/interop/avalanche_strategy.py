"""Any clzoo method as an Avalanche strategy: :class:`ClzooStrategy`, a ``SupervisedTemplate`` subclass that an
Avalanche user drops into their loop (``strategy.train(exp)``, ``strategy.eval(test_stream)``) with their
evaluation plugins and loggers::

    strategy = ClzooStrategy.from_benchmark(bench, "der", model_cfg={"_target_": "clzoo.models.MLP"},
                                            method_args={"alpha": 0.5}, lr=0.03, train_mb_size=10,
                                            evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)

Training an experience is clzoo's own loop (:func:`clzoo.engine.runner.train_task`: the method's ``start_task``,
``observe`` on shuffled batches, ``end_task``), so a method behaves exactly as under ``clzoo-run``; Avalanche's
experience-level callbacks (``before/after_training_exp``, every evaluation callback) fire as usual, its
iteration-level training callbacks do not (the clzoo method owns its steps). Inputs are the benchmark's images
as uint8 or [0, 1] floats (``ToTensor``; clzoo normalises with ``augment``). Labels keep Avalanche's ids: the
strategy maps them to clzoo's class order (classes in order of first appearance, as ``stream=avalanche``) and
back. ``strategy.clzoo_method`` is the clzoo method (its memory ledger: ``clzoo.memory.measure``).
"""
from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ..data.scenarios import Task
from ..engine.runner import build_model, instantiate, train_task, transforms_from_config
from ..methods.base import RunContext, StreamInfo
from ..models import mask_logits
from .avalanche import _dataset_tensors


class _EvalView(nn.Module):
    """The clzoo method as the model Avalanche evaluates: logits over Avalanche's label ids, the classes not yet
    seen masked out (clzoo's class-IL evaluation)."""

    def __init__(self, method, order: list[int]):
        super().__init__()
        self.method = method
        self.order = list(order)
        self.n_seen = 0

    def forward(self, x):
        from .avalanche import _to_uint8

        x = self.method.preprocess(_to_uint8(x.cpu(), "ClzooStrategy").to(next(self.method.parameters()).device))
        logits = self.method(x, task_id=None)
        if self.n_seen:
            logits = mask_logits(logits, self.n_seen)
        out = torch.full((len(x), max(self.order) + 1), float("-inf"), device=logits.device)
        out[:, torch.tensor(self.order, device=logits.device)] = logits
        return out


class ClzooStrategy(SupervisedTemplate):
    """A clzoo method (``method``: a name of ``clzoo/conf/method``) trained by clzoo's loop inside Avalanche."""

    def __init__(self, *, method: str, stream_info: StreamInfo, order: list[int], model_cfg: dict | None = None,
                 method_args: dict | None = None, lr: float = 0.1, optimizer: dict | None = None,
                 train_mb_size: int = 10, train_epochs: int = 1, eval_mb_size: int = 1000, device="cpu",
                 augment: dict | None = None, budget_mb: float | None = None, seed: int | None = 0, **template_kwargs):
        from ..config import compose
        from ..engine.checkpoint import seed_everything
        from ..memory.ledger import Budget

        overrides = [f"method={method}"] + ([f"budget.mb={budget_mb}"] if budget_mb is not None else [])
        method_cfg = {**compose(overrides)["method"], **(method_args or {})}
        device = torch.device(device)
        train_tf, eval_tf = transforms_from_config(augment, device)
        ctx = RunContext(stream_info, device, train_tf, eval_tf, Budget(mb=budget_mb),
                         dict(optimizer or {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0}),
                         int(train_mb_size), int(train_epochs))
        if seed is not None:  # as clzoo-run: the seed fixes initialisation, then batch order and buffer draws
            seed_everything(int(seed))

        class _Shape:  # what build_model reads of a stream
            input_shape, n_classes = stream_info.input_shape, stream_info.n_classes

        net = build_model(model_cfg or {"_target_": "clzoo.models.MLP"}, _Shape)
        self.clzoo_method = instantiate(method_cfg, model=net, ctx=ctx).to(device)
        self.order = list(order)
        self._remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
        self._remap[torch.tensor(order)] = torch.arange(len(order))
        self._cfg = {"trainer": {"epochs": int(train_epochs), "batch_size": int(train_mb_size), "log_every": 10},
                     "stream": {"online": stream_info.online}}
        self._progress = {"step": 0}
        self._task_id = 0
        self._seed = int(seed or 0)
        view = _EvalView(self.clzoo_method, order)
        unused = torch.optim.SGD(view.parameters(), lr=lr)  # Avalanche wants one; the clzoo method makes its own
        from ..engine.checkpoint import rng_state

        # the method's own random stream (batch order, buffer draws), kept apart from what Avalanche draws
        # (its data loaders), so a run matches clzoo-run's with the same seed
        self._rng = rng_state()
        super().__init__(model=view, optimizer=unused, train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device, **template_kwargs)

    @classmethod
    def from_benchmark(cls, bench, method: str, **kwargs) -> "ClzooStrategy":
        """The strategy for ``bench``: its classes per experience and input shape, read from the benchmark."""
        order: list[int] = []
        exp_classes = [sorted(int(c) for c in e.classes_in_this_experience) for e in bench.train_stream]
        for classes in exp_classes:
            order += [c for c in classes if c not in order]
        remap = {c: i for i, c in enumerate(order)}
        repeated = sum(len(c) for c in exp_classes) > len(order)
        task_classes = [sorted(remap[c] for c in classes) if not repeated else list(range(len(order)))
                        for classes in exp_classes]
        x0 = bench.train_stream[0].dataset[0][0]
        shape = tuple(x0.shape) if x0.dim() == 3 else (1, *x0.shape)
        info = StreamInfo(len(exp_classes), len(order), shape, task_classes,
                          "domain_il" if repeated else "class_il", False)
        return cls(method=method, stream_info=info, order=order, **kwargs)

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        x, y, _ = _dataset_tensors(experience.dataset, f"experience {experience.current_experience}")
        y = self._remap[y]
        empty = torch.zeros(0, dtype=torch.long)
        task = Task(self._task_id, list(self.clzoo_method.ctx.stream.task_classes[self._task_id]), x, y,
                    x[empty], y[empty])
        from ..engine.checkpoint import rng_state, set_rng_state

        outside = rng_state()
        set_rng_state(self._rng)
        method = self.clzoo_method
        if hasattr(task, "training_view"):  # what a method sees: no test data, its validation split if it asks
            task = task.training_view(getattr(method, "validation_fraction", 0.0), self._seed)
        method.train()
        method.start_task(task)
        train_task(method, task, self._cfg, self.device, None, self._progress, False)
        method.end_task(task)
        self.model.n_seen = method.ctx.stream.classes_seen(self._task_id)
        self._task_id += 1
        self._rng = rng_state()
        set_rng_state(outside)
