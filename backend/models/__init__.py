"""Model loading (HF id, local dir, embedded default, variants), encoders, NLI judge."""
