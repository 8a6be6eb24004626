"""Generation (HF, vLLM) on shared types."""
