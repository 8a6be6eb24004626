"""Hallucination probes: storage, training, fact tables, applying to stored runs."""
