"""Classifier heads other than the plain linear layer."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CosineLinear(nn.Module):
    """Scaled cosine similarity between the features and one weight vector per class, without bias: the
    classifier ER-ACE's authors use (Caccia et al., ICLR 2022, code ``distLinear``: scale 10, both sides
    L2-normalised). Its logits are bounded by ``scale``, so a new class cannot win by growing its weight norm."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0):
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Linear(in_features, out_features, bias=False).weight  # nn.Linear's initialisation

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1, eps=1e-5), F.normalize(self.weight, dim=1, eps=1e-5))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"
