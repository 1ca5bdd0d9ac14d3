"""Joint training: at every task, train on the union of all training data seen so far. The upper bound.

It keeps every training sample it has seen, so its memory ledger shows the whole stream as exemplars.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..registry import register_method
from ...memory.buffer import label_dtype


@register_method("joint")
class Joint(Method):
    """Cross-entropy on batches drawn from everything seen so far (stored as uint8, like any exemplar)."""

    def _keep_task(self, task_id: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.register_buffer(f"seen_x_{task_id}", x.clone())
        self.register_buffer(f"seen_y_{task_id}", y.to(label_dtype(self.ctx.stream.n_classes)).clone())
        self.memory_categories[f"seen_x_{task_id}"] = "exemplars"
        self.memory_categories[f"seen_y_{task_id}"] = "exemplar_extras"

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.memory_categories = {}

    def begin_task(self, task):
        self._keep_task(task.id, task.x_train, task.y_train)

    def training_data(self, task):
        ids = sorted(int(k.rsplit("_", 1)[1]) for k in self._buffers if k.startswith("seen_x_"))
        x = torch.cat([getattr(self, f"seen_x_{t}") for t in ids])
        y = torch.cat([getattr(self, f"seen_y_{t}").long() for t in ids])
        return x, y

    def observe(self, x, y, task_id):
        return self.step(F.cross_entropy(self.model(self.augment(x)), y))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for key, value in state_dict.items():
            if key.startswith("seen_x_") and key not in self._buffers:
                t = int(key.rsplit("_", 1)[1])
                self._keep_task(t, torch.empty_like(value), torch.empty_like(state_dict[f"seen_y_{t}"]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
