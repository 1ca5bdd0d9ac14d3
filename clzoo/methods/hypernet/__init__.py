"""Hypernetwork methods: a hypernetwork generates the target network's weights from a task embedding (HNET),
or from an interval around it with interval bound propagation (HyperInterval)."""
