"""Model diff: what B changed relative to A, token by token."""
