"""Baselines: the lower (finetune) and upper (joint) bounds."""
