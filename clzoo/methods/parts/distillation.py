"""Knowledge-distillation losses (a flat module of functions; methods import what they use).

* :func:`soft_targets` - ``softmax(logits / T)``, Hinton et al.'s softened distribution.
* :func:`distillation_kl` - ``KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch
  (LwF, Li & Hoiem 2016: the "knowledge distillation loss" with T = 2). Zero when student == teacher; its
  gradient equals that of the cross-entropy form with soft targets (LwF's ``L_old``), which differs from it
  only by the teacher's entropy.
* :func:`feature_distillation` - distance between current and frozen-teacher features (PASS, NAPA-VQ).
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


def feature_distillation(student: Tensor, teacher: Tensor, reduction: str = "norm") -> Tensor:
    """Distance between the current features and those of a frozen earlier model (the teacher is detached).

    ``reduction``: ``norm`` - the L2 (Frobenius) norm of the difference over the whole batch, ``||F - F_old||``,
    as PASS and NAPA-VQ compute it (``torch.dist``; its scale grows with the batch size); ``mse`` - the mean of
    the squared differences; ``sum_sq`` - ``sum_i ||f_i - f_old_i||^2 / B``."""
    diff = student.flatten(1) - teacher.detach().flatten(1)
    if reduction == "norm":
        return diff.norm()
    if reduction == "mse":
        return diff.pow(2).mean()
    if reduction == "sum_sq":
        return diff.pow(2).sum() / max(len(diff), 1)
    raise ValueError(f"unknown feature distillation reduction '{reduction}'; choose norm, mse or sum_sq")
