"""MEMO: Memory-efficient Expandable MOdel.

Zhou, Wang, Ye, Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient Class-Incremental Learning", ICLR 2023
(official code: github.com/wangkiw/ICLR23-MEMO, ``models/memo.py``; configuration as PyCIL's ``exps/memo.json``).

DER's expansion, but only the deep *specialized* blocks grow: the shallow *generalized* blocks (on a CIFAR ResNet-32
the stem and the first two stages, 112,016 parameters) are shared by every task, and each task adds a copy of the
last stage (351,488 parameters). Training, the auxiliary head, weight aligning and herded exemplars are DER's
(:class:`~clzoo.methods.parts.expansion.ExpandingRepresentation`). The generalized blocks keep training after task
0 (``train_base: true``, the published runs); ``train_base: false`` freezes them (the paper's ablation).

The backbone must declare its split (``expansion_split()``): CIFAR ResNets, the reduced ResNet-18, ConvNet2 and an
MLP with at least two hidden layers do.
"""
from __future__ import annotations

from ..parts.expansion import ExpandingRepresentation
from ..registry import register_method


@register_method("memo")
class MEMO(ExpandingRepresentation):
    whole_backbone = False
