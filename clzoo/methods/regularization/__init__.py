"""Regularization methods: penalties on parameters or outputs, no exemplars."""
