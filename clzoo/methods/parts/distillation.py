"""Knowledge-distillation losses (a flat module of functions; methods import what they use).

* :func:`soft_targets` - ``softmax(logits / T)``, Hinton et al.'s softened distribution.
* :func:`distillation_kl` - ``KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch
  (LwF, Li & Hoiem 2016: the "knowledge distillation loss" with T = 2). Zero when student == teacher; its
  gradient equals that of the cross-entropy form with soft targets (LwF's ``L_old``), which differs from it
  only by the teacher's entropy.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / T)`` along the last dimension."""
    return F.softmax(logits / temperature, dim=-1)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0,
                    t2_scaling: bool = False) -> Tensor:
    """Mean over the batch of ``KL(softmax(teacher / T) || softmax(student / T))``.

    ``t2_scaling`` multiplies by ``T^2`` (Hinton et al., 2015) so the gradient scale does not shrink with T;
    LwF does not scale. The teacher is detached.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2 if t2_scaling else kl
