"""CODA-Prompt: COntinual Decomposed Attention-based prompting.

Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira, "CODA-Prompt: COntinual Decomposed
Attention-based Prompting for Rehearsal-Free Continual Learning", CVPR 2023 (official code:
GT-RIPL/CODA-Prompt@6417d4f ``models/zoo.py`` ``CodaPrompt``, ``learners/prompt.py``).

At each of ``layers`` ([0..4]) a pool of ``pool_size`` components ``P_m`` (``length`` x D), keys ``K_m`` and
attention vectors ``A_m`` (D each). The prompt is a weighted sum of components, the weights the cosines (no
softmax, no top-k) of the attended query with the keys::

    alpha_m(x) = cos(q(x) * A_m, K_m),     P(x) = sum_m alpha_m(x) P_m

split into key / value prefix halves. The pool is cut into ``pool_size / n_tasks`` components per task. Task
``t`` trains its own slice; earlier components take part in the sum but are detached (frozen); at test every
component up to the current task's is used. At the start of each task its new components (and keys, attention
vectors) are initialised by Gram-Schmidt: random, orthogonal to every earlier component, unit norm; earlier rows
are kept bit for bit; later rows stay zero (the code's ``gram_schmidt``). The orthogonality penalty
``ortho_mu * (||KK^T - I||^2 + ||AA^T - I||^2 + ||PP^T - I||^2)`` (means of squares) defaults to 0, as the current
code (with Gram-Schmidt initialisation a penalty lowers accuracy: GT-RIPL/CODA-Prompt issue #12).

Memory: the whole pool is allocated up front (as the code does, "for model saving simplicity") and the ledger
counts it all (``prompts``); :meth:`memory_report` also records the part used after each task,
``(t + 1) / n_tasks`` of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parts.prompting import PromptMethod
from ..registry import register_method


def gram_schmidt_rows(M: torch.Tensor, start: int, stop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``M`` (rows = flattened components) whose rows ``[start, stop)`` are random, orthonormal and
    orthogonal to rows ``[0, start)``; rows ``< start`` are copied bit for bit. The earlier rows have been trained,
    so they are neither unit-norm nor mutually orthogonal any more: the new rows are made orthogonal to an
    orthonormal basis of their span (QR), not to the rows themselves."""
    flat = M.detach().reshape(M.shape[0], -1)
    if stop > flat.shape[1]:
        raise ValueError(f"coda_prompt: {stop} orthogonal components cannot exist in {flat.shape[1]} dimensions; "
                         f"lower method.pool_size (at most {flat.shape[1]} for this ViT width)")
    out = flat.clone()
    basis = torch.linalg.qr(flat[:start].double().t()).Q.t() if start else flat[:0].double()
    for k in range(start, stop):
        v = torch.randn(flat.shape[1], dtype=torch.float64, generator=generator).to(flat.device)
        for _ in range(2):  # twice is enough (Kahan): orthogonal to working precision
            if len(basis):
                v = v - basis.t() @ (basis @ v)
        v = v / v.norm()
        basis = torch.cat([basis, v[None]])
        out[k] = v.to(out.dtype)
    return out.reshape(M.shape)


def attended_cosines(q: torch.Tensor, A: torch.Tensor, K: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``alpha[b, m] = cos(q_b * A_m, K_m)`` as two ``(B, D) x (D, M)`` products, without the ``(B, M, D)`` tensor of
    attended queries: ``<q * A_m, K_m> = q . (A_m * K_m)`` and ``||q * A_m||^2 = q^2 . A_m^2``. The same numbers as
    ``F.normalize(q[:, None] * A) . F.normalize(K)`` (to float rounding; ``eps`` as ``F.normalize``'s). On a CPU
    a step of the small-ViT suite takes 0.80x the broadcast form's time at 100 components, 0.96x at 10
    (bench/prompt_step.py)."""
    numerator = q @ (A * F.normalize(K, dim=1, eps=eps)).t()
    norms = ((q * q) @ (A * A).t()).sqrt()
    return numerator / norms.clamp_min(eps)


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(t.shape[0], device=t.device, dtype=t.dtype)
    return ((t @ t.t() - eye) ** 2).mean()


class CodaPool(nn.Module):
    def __init__(self, layers, pool_size: int, length: int, dim: int):
        super().__init__()
        self.p = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(pool_size, length, dim)) for l in layers})
        self.k = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(pool_size, dim)) for l in layers})
        self.a = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(pool_size, dim)) for l in layers})


@register_method("coda_prompt")
class CodaPrompt(PromptMethod):
    def __init__(self, model, ctx, pool_size: int = 100, length: int = 8, ortho_mu: float = 0.0,
                 layers: list | None = None, mask_past: bool = True, lr_schedule: str = "cosine"):
        super().__init__(model, ctx, mask_past, lr_schedule)
        self.layers = [0, 1, 2, 3, 4] if layers is None else [int(l) for l in layers]
        n_tasks = ctx.stream.n_tasks
        if pool_size % n_tasks:
            raise ValueError(f"coda_prompt: the pool of {pool_size} components is split evenly over the tasks, and "
                             f"{n_tasks} tasks do not divide it; set method.pool_size to a multiple of {n_tasks}")
        if length % 2:
            raise ValueError(f"coda_prompt: components split into key / value halves; length={length} must be even")
        if pool_size > self.vit.dim:
            raise ValueError(f"coda_prompt: pool_size={pool_size} keys cannot be mutually orthogonal in the ViT's "
                             f"{self.vit.dim} dimensions; set method.pool_size <= {self.vit.dim}")
        self.vit.check_prefix_layers(self.layers)
        self.per_task, self.ortho_mu = pool_size // n_tasks, ortho_mu
        self.prompt = self.add_prompts(CodaPool(self.layers, pool_size, length, self.vit.dim))
        self.init_components(0)

    @torch.no_grad()
    def init_components(self, task_id: int) -> None:
        """Gram-Schmidt initialisation of task ``task_id``'s components, keys and attention vectors."""
        s, f = task_id * self.per_task, (task_id + 1) * self.per_task
        for group in (self.prompt.p, self.prompt.k, self.prompt.a):
            for param in group.values():
                param.copy_(gram_schmidt_rows(param, s, f))

    def begin_task(self, task):
        if task.id > 0:
            self.init_components(task.id)

    def features(self, x, train, task_id):
        q = self.vit.query(x)
        t = task_id if train else self.current_task
        s, f = t * self.per_task, (t + 1) * self.per_task
        loss, prefixes = 0.0, {}
        for layer in self.layers:
            K, A, P = self.prompt.k[str(layer)], self.prompt.a[str(layer)], self.prompt.p[str(layer)]
            if train:  # earlier components frozen (detached), only this task's slice learns
                K, A, P = (torch.cat([m[:s].detach(), m[s:f]]) for m in (K, A, P))
            else:
                K, A, P = K[:f], A[:f], P[:f]
            alpha = attended_cosines(q, A, K)                  # (B, M) cosines, no softmax
            prompt = torch.einsum("bm,mld->bld", alpha, P)     # (B, length, D)
            half = prompt.shape[1] // 2
            prefixes[layer] = (prompt[:, :half], prompt[:, half:])
            if train and self.ortho_mu > 0:
                loss = loss + self.ortho_mu * (ortho_penalty(K) + ortho_penalty(A) + ortho_penalty(P.flatten(1)))
        return self.vit(x, prefixes=prefixes)[:, 0], loss

    def used_prompt_params(self) -> int:
        used = min(self.current_task + 1, self.ctx.stream.n_tasks) * self.per_task
        return sum(p[:used].numel() for group in (self.prompt.p, self.prompt.k, self.prompt.a) for p in group.values())
