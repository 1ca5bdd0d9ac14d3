"""Parts shared by several methods: distillation losses, parameter-importance estimators, ..."""
