"""Cache policies: one module per policy family."""
