"""Online and task-free continual learning: GSS, MIR, task-free MAS, OnPro."""
