"""Exemplar-free prototype methods: NCM (first task, then frozen), PASS, PRD, NAPA-VQ."""
