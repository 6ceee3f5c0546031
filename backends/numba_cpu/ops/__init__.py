"""The per-op mode: one kernel per node with a Python loop between them (debugging, fallback)."""
