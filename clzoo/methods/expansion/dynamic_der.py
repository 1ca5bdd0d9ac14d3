"""DER: Dynamically Expandable Representation (registered as ``dynamic_der``; ``der`` is Dark Experience Replay).

Yan, Xie, He, "DER: Dynamically Expandable Representation for Class Incremental Learning", CVPR 2021 (as in
PyCIL's ``models/der.py``, the implementation MEMO compares against).

Every task adds a whole new backbone, initialised from the previous one; older backbones are frozen (eval mode);
the classifier reads the concatenation of every backbone's feature; an auxiliary head over (new classes + 1)
trains the newest backbone to tell the new classes apart from the old; weight aligning and herded exemplars as
iCaRL. The paper's channel-level masks and pruning are not implemented (PyCIL's DER, and the DER that MEMO's
aligned-memory protocol is built on, run without pruning).
"""
from __future__ import annotations

from ..parts.expansion import ExpandingRepresentation
from ..registry import register_method


@register_method("dynamic_der")
class DynamicDER(ExpandingRepresentation):
    whole_backbone = True
