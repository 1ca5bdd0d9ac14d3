"""Prompt-based continual learning on a frozen pretrained ViT: L2P / L2P++, DualPrompt, CODA-Prompt, and the
head-only baselines on the same backbone."""
