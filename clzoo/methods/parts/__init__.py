"""Parts shared by several methods: distillation losses, parameter-importance estimators, a prototype store and
the nearest-class-mean classifier, rotation label augmentation, a supervised contrastive loss."""
