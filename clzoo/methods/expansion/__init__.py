"""Expansion methods: the representation grows with the tasks (DER, MEMO)."""
