"""Replay methods: a buffer of past exemplars (and possibly their logits)."""
