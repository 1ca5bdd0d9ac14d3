"""Several seeds of one configuration trained in one process, in step (``clzoo-leaderboard run --batch-seeds``).

Each seed is its own run (:func:`clzoo.engine.runner.run_steps`: its own folder, model, optimizer, buffer,
checkpoints, results.json); the runs advance together, one training step each, and a method that defines
``observe_group`` (fine-tuning and ER) computes the step of all of them at once
(:mod:`clzoo.methods.parts.seed_stack`: the seeds' MLPs stacked, bit-identical to separate runs). Every other
method cannot be batched this way and its seeds run one after the other (:func:`why_not_batched` says why).

Random numbers: every run draws from the process's global generators, as a separate run does. Each run keeps its
own state of them and it is swapped in whenever that run computes: the torch generator around every step and
every draw a method makes inside ``observe_group``; Python's ``random`` and NumPy's too (slower, 0.1 ms) around
everything outside the step loop (stream and model building, ``begin_task`` / ``end_task``, evaluation). Inside
the step loop fine-tuning and ER draw from torch only.
"""
from __future__ import annotations

import contextlib
import random
import sys

import numpy as np
import torch

from ..methods.parts.seed_stack import release_stacks
from . import runner


def why_not_batched(cfg: dict) -> str | None:
    """Why the seeds of ``cfg`` cannot be trained as one batched model (None: they can)."""
    from hydra.utils import get_class

    try:
        cls = get_class(cfg["method"]["_target_"])
    except Exception as err:  # noqa: BLE001 - an unknown method fails in the run itself, with its own message
        return f"its method cannot be loaded ({err})"
    if "observe_group" not in vars(cls):
        return f"{cls.__name__} has no observe_group (only fine-tuning and ER on an MLP are batched)"
    if not str(cfg["model"].get("_target_", "")).endswith(".MLP"):
        return "its model is not an MLP"
    if runner.resolve_device(cfg["trainer"].get("device", "auto")).type != "cpu":
        return "it runs on an accelerator (batching seeds is for CPU runs)"
    if cfg["stream"].get("online") or cfg["stream"].get("task_free"):
        return "its stream is online or task-free"
    trainer = cfg["trainer"]
    if (trainer.get("amp") or "none") != "none" or trainer.get("compile") or trainer.get("channels_last"):
        # the stacked step computes the seeds' MLPs itself, outside autocast, compilation and layout changes
        return "it sets trainer.amp, trainer.compile or trainer.channels_last"
    return None


class _Seat:
    """One run of the group: its step generator, its random-number states, where it prints, what it asks."""

    def __init__(self, steps, log):
        self.steps, self.log = steps, log
        self.torch_state = self.py_state = self.np_state = None
        self.request = None
        self.result = self.error = None

    def enter(self, full: bool) -> None:
        if self.torch_state is not None:
            torch.set_rng_state(self.torch_state)
            if full:
                random.setstate(self.py_state)
                np.random.set_state(self.np_state)

    def leave(self, full: bool) -> None:
        self.torch_state = torch.get_rng_state()
        if full:
            self.py_state, self.np_state = random.getstate(), np.random.get_state()

    def advance(self, send=None, throw: BaseException | None = None) -> None:
        """Run this seed until it asks for its next step, or ends (result or error)."""
        full = self.request is None or self.request[4]  # the run's start, or an epoch's end: more than the loop
        if full:
            release_stacks()  # the models get their own parameters back before checkpoints, evaluation, end_task
        self.enter(full)
        out, sys.stdout = sys.stdout, self.log or sys.stdout
        try:
            if throw is not None:
                self.request = self.steps.throw(throw)
            elif send is None:
                self.request = next(self.steps)
            else:
                self.request = self.steps.send(send)
        except StopIteration as stop:
            self.request, self.result = None, stop.value
        except Exception as err:  # noqa: BLE001 - this seed failed; the others go on
            self.request, self.error = None, err
        finally:
            sys.stdout = out
            self.leave(True if self.request is None else full)


def _shared_stream(cfgs: list[dict]):
    """The runs' stream, built once when they share the stream and data settings (the training seed does not enter
    it; each run gets its own copy), else None. None too when it cannot be built: each run then fails with its
    own error."""
    if any(cfg.get(k) != cfgs[0].get(k) for cfg in cfgs for k in ("stream", "data")):
        return None
    try:
        return runner.build_stream_from_config(cfgs[0])
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def run_seed_group(cfgs: list[dict], run_dirs: list, logs: list | None = None) -> list:
    """Train the runs ``cfgs`` (one configuration at several seeds) into ``run_dirs`` together; returns, per run,
    its results dict or the exception it failed with. ``logs``: a stream per run for what it prints."""
    logs = logs or [None] * len(cfgs)
    with contextlib.ExitStack() as stack:
        run_dirs = [stack.enter_context(runner.run_session(cfg, run_dir)) for cfg, run_dir in zip(cfgs, run_dirs)]
        shared = _shared_stream(cfgs)
        seats = [_Seat(runner.run_steps(cfg, run_dir, False, stream=shared and shared.copy()), log)
                 for cfg, run_dir, log in zip(cfgs, run_dirs, logs)]
        try:
            for seat in seats:
                seat.advance()
            while True:
                live = [s for s in seats if s.request is not None]
                if not live:
                    break
                for seat, (loss, err) in zip(live, _answer(live)):
                    seat.advance(send=loss, throw=err)
        finally:
            release_stacks()
    return [s.error if s.error is not None else s.result for s in seats]


def _answer(live: list[_Seat]) -> list[tuple]:
    """The loss of every live seat's step, ``(loss, None)``, or ``(None, exception)``: one ``observe_group`` call
    when they are steps of one batchable method on one task, else ``observe`` seat by seat."""
    methods = [s.request[0] for s in live]
    cls = type(methods[0])
    task_ids = {s.request[3] for s in live}
    if len(live) > 1 and "observe_group" in vars(cls) and all(type(m) is cls for m in methods) and len(task_ids) == 1:
        @contextlib.contextmanager
        def rng(i):
            live[i].enter(False)
            try:
                yield
            finally:
                live[i].leave(False)

        try:
            losses = cls.observe_group(methods, [s.request[1] for s in live], [s.request[2] for s in live],
                                       task_ids.pop(), rng)
            return [(loss, None) for loss in losses]
        except Exception as err:  # noqa: BLE001 - every seed of the step fails with it
            return [(None, err)] * len(live)
    answers = []
    for seat in live:
        seat.enter(False)
        try:
            answers.append((seat.request[0].observe(*seat.request[1:4]), None))
        except Exception as err:  # noqa: BLE001 - this seed fails with it
            answers.append((None, err))
        finally:
            seat.leave(False)
    return answers
