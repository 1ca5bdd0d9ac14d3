"""DualPrompt, as in the CODA-Prompt code.

Wang, Zhang, Ebrahimi, Sun, Zhang, Lee, Ren, Su, Perot, Dy, Pfister, "DualPrompt: Complementary Prompting for
Rehearsal-free Continual Learning", ECCV 2022; implemented as GT-RIPL/CODA-Prompt@6417d4f ``models/zoo.py``
``DualPrompt`` (the baseline of the CODA-Prompt paper). Prefix tuning at two sets of layers:

* G(eneral)-prompts, shared by all tasks: one prompt of ``g_length`` at each of ``g_layers`` ([0, 1]);
* E(xpert)-prompts, one per task: a pool of ``pool_size`` (default: the number of tasks) prompts of
  ``e_length`` at each of ``e_layers`` ([2, 3, 4]), each with its own key per layer (the CODA code keeps a key set
  per layer, the original DualPrompt one shared set; GT-RIPL/CODA-Prompt issue #3).

Training uses the true task id: E-prompt ``t`` and the key loss ``sum_b (1 - cos(q_b, k_t))`` (summed over the
batch, as the code). At test the E-prompt whose key has the highest cosine with the query is used (top-1); no task
id. Prompts split into key / value halves; everything starts uniform in [0, 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parts.prompting import PromptMethod, uniform_
from ..registry import register_method


class DualPromptPool(nn.Module):
    def __init__(self, g_layers, e_layers, g_length: int, e_length: int, pool_size: int, dim: int):
        super().__init__()
        self.g = nn.ParameterDict({str(l): uniform_((g_length, dim)) for l in g_layers})
        self.e = nn.ParameterDict({str(l): uniform_((pool_size, e_length, dim)) for l in e_layers})
        self.e_keys = nn.ParameterDict({str(l): uniform_((pool_size, dim)) for l in e_layers})


@register_method("dualprompt")
class DualPrompt(PromptMethod):
    def __init__(self, model, ctx, pool_size: int | None = None, e_length: int = 20, g_length: int = 6,
                 g_layers: list | None = None, e_layers: list | None = None, mask_past: bool = True,
                 lr_schedule: str = "cosine"):
        super().__init__(model, ctx, mask_past, lr_schedule)
        self.g_layers = [0, 1] if g_layers is None else [int(l) for l in g_layers]
        self.e_layers = [2, 3, 4] if e_layers is None else [int(l) for l in e_layers]
        n_tasks = ctx.stream.n_tasks
        pool_size = n_tasks if pool_size is None else int(pool_size)
        if pool_size < n_tasks:
            raise ValueError(f"dualprompt: pool_size={pool_size} E-prompts for {n_tasks} tasks; it keeps one per task, "
                             f"so set method.pool_size >= {n_tasks} (or null for the number of tasks)")
        if e_length % 2 or g_length % 2:
            raise ValueError(f"dualprompt: prompts split into key / value halves; e_length={e_length} and "
                             f"g_length={g_length} must be even")
        self.vit.check_prefix_layers(self.g_layers + self.e_layers)
        self.prompt = self.add_prompts(DualPromptPool(self.g_layers, self.e_layers, g_length, e_length, pool_size,
                                                      self.vit.dim))

    def features(self, x, train, task_id):
        q = F.normalize(self.vit.query(x), dim=1)
        B, loss, prefixes = x.shape[0], 0.0, {}
        for layer in self.e_layers:
            cos = q @ F.normalize(self.prompt.e_keys[str(layer)], dim=1).t()      # (B, pool)
            if train:
                idx = torch.full((B,), int(task_id), dtype=torch.long, device=x.device)
                loss = loss + (1.0 - cos[:, task_id]).sum()
            else:
                idx = cos.argmax(1)
            P = self.prompt.e[str(layer)][idx]                                    # (B, e_length, D)
            half = P.shape[1] // 2
            prefixes[layer] = (P[:, :half], P[:, half:])
        for layer in self.g_layers:
            G = self.prompt.g[str(layer)].expand(B, -1, -1)
            half = G.shape[1] // 2
            pk, pv = G[:, :half], G[:, half:]
            if layer in prefixes:  # a layer with both: E-prompt first, as the code
                pk, pv = torch.cat([prefixes[layer][0], pk], 1), torch.cat([prefixes[layer][1], pv], 1)
            prefixes[layer] = (pk, pv)
        return self.vit(x, prefixes=prefixes)[:, 0], loss

    def used_prompt_params(self) -> int:
        used = min(self.current_task + 1, len(next(iter(self.prompt.e_keys.values()))))
        return (sum(g.numel() for g in self.prompt.g.values())
                + sum(e[:used].numel() for e in self.prompt.e.values())
                + sum(k[:used].numel() for k in self.prompt.e_keys.values()))
