"""Reprogramming: a frozen backbone with small per-task parameters."""
