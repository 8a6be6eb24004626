"""Sampling groups: verify, prefix trees, THR/TEMPO, rollouts, contrastive models."""
