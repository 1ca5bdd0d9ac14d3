"""Methods that run another library's strategies under clzoo's engine and ledger."""
