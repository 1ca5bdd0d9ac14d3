"""An Avalanche strategy under clzoo's engine and memory ledger: ``clzoo-run method=avalanche
method.strategy=SynapticIntelligence 'method.args={si_lambda: 1.0}'``.

``strategy`` names a class of ``avalanche.training`` (``Naive``, ``EWC``, ``SynapticIntelligence``, ``LwF``,
``MAS``, ``GEM``, ``AGEM``, ``Replay`` ...) or a dotted path to one; ``args`` are its own keyword arguments.
The strategy trains clzoo's model with its own loop, once per task, at the end of the task (it receives the
task's training images, normalised by the stream's ``augment.mean/std``, without augmentation, and clzoo's
optimizer settings, batch size and epochs); clzoo evaluates. What the strategy keeps between tasks (its plugins'
tensors: SI's importances and reference weights, EWC's Fisher, a replay buffer, and its clock) is serialised into
the ``strategy_state`` buffer after every task and the strategy dropped: that buffer is the one copy kept between
tasks, so the ledger counts it byte for byte, and every task (and a resumed run) rebuilds the strategy from it.
Avalanche is imported when the first task starts, never at ``clzoo-run`` start-up.
"""
from __future__ import annotations

import importlib
import io
import pickle

import torch
from torch import Tensor, nn

from ..base import Method
from ..registry import register_method

#: attributes of a plugin that are references to the run, not state it keeps
_SKIP = ("strategy", "model", "optimizer", "evaluator", "dataloader", "experience", "adapted_dataset",
         "mbatch", "mb_output", "clock")


def strategy_class(name: str):
    if "." in name:
        module, _, attr = name.rpartition(".")
    else:
        module, attr = "avalanche.training", name
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ValueError(f"method=avalanche needs avalanche-lib (pip install 'clzoo[avalanche]'): {err}") from err
    except AttributeError:
        raise ValueError(f"method.strategy={name}: no such strategy in {module}; e.g. Naive, EWC, "
                         "SynapticIntelligence, LwF, GEM, AGEM, Replay, or a dotted path") from None


#: the strategy's arguments by default: SI's penalty weight (Avalanche has no default for it)
DEFAULT_ARGS = {"si_lambda": 1.0}


@register_method("avalanche")
class AvalancheStrategy(Method):
    def __init__(self, model, ctx, strategy: str = "SynapticIntelligence", args: dict | None = DEFAULT_ARGS):
        super().__init__(model, ctx)
        self.strategy_name, self.strategy_args = str(strategy), dict(args or {})
        self.register_buffer("strategy_state", torch.zeros(0, dtype=torch.uint8))
        self._strategy = None

    # ---------------------------------------------------------------- the Avalanche side
    def _build(self):
        if self._strategy is None:
            cls = strategy_class(self.strategy_name)
            opt = self.ctx.optimizer
            optimizer = torch.optim.SGD(self.model.parameters(), lr=float(opt.get("lr", 0.1)),
                                        momentum=float(opt.get("momentum") or 0.0),
                                        weight_decay=float(opt.get("weight_decay") or 0.0))
            from avalanche.training.plugins import EvaluationPlugin

            kwargs = dict(model=self.model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                          train_mb_size=self.ctx.batch_size, train_epochs=self.ctx.epochs, eval_mb_size=1000,
                          device=self.ctx.device, evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)
            try:
                self._strategy = cls(**{**kwargs, **self.strategy_args})
            except TypeError as err:
                raise ValueError(f"method.strategy={self.strategy_name} with method.args={self.strategy_args}: "
                                 f"{err}") from err
            self._restore()
        return self._strategy

    def _plugin_state(self) -> list[dict]:
        out = []
        for plugin in self._strategy.plugins:
            out.append({k: v for k, v in vars(plugin).items() if k not in _SKIP and not isinstance(v, nn.Module)
                        and not callable(v)})
        return out

    def _save(self) -> None:
        buf = io.BytesIO()
        torch.save(self._plugin_state(), buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        self.strategy_state = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).clone()

    def _restore(self) -> None:
        if self._strategy is None or not len(self.strategy_state):
            return
        states = torch.load(io.BytesIO(self.strategy_state.numpy().tobytes()), weights_only=False)
        for plugin, state in zip(self._strategy.plugins, states):
            vars(plugin).update(state)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "strategy_state"
        if key in state_dict:  # its size changes as the strategy keeps more
            self.strategy_state = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._restore()

    # ---------------------------------------------------------------- clzoo's contract
    def training_data(self, task) -> tuple[Tensor, Tensor]:
        """Nothing for the engine's batch loop: the strategy trains on the whole task in :meth:`end_task`."""
        return task.x_train[:0], task.y_train[:0]

    def observe(self, x, y, task_id):  # never called: training_data is empty
        raise RuntimeError("method=avalanche trains in end_task")

    def end_task(self, task) -> None:
        from avalanche.benchmarks import tensors_benchmark

        strategy = self._build()
        x = self.preprocess(task.x_train.to(self.device)).cpu()
        y = task.y_train.cpu()
        bench = tensors_benchmark([(x, y)], [(x[:1], y[:1])], task_labels=[0])  # one experience: this task
        strategy.train(bench.train_stream[0])
        self._save()
        # the serialised buffer is the one copy kept between tasks (counted, checkpointed); the strategy is rebuilt
        # from it at the next task, exactly as after a resume
        self._strategy = None
