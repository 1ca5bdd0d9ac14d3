"""Memory: the replay buffer, the ledger that counts kept bytes by category, and the budget."""
from .buffer import SELECTIONS, ReplayBatch, ReplayBuffer
from .ledger import CATEGORIES, MB, MODEL_CATEGORIES, Budget, BudgetError, Ledger, categorize, measure, misfiled, tag_memory

__all__ = ["SELECTIONS", "ReplayBatch", "ReplayBuffer", "CATEGORIES", "MB", "MODEL_CATEGORIES", "Budget",
           "BudgetError", "Ledger", "categorize", "measure", "misfiled", "tag_memory"]
