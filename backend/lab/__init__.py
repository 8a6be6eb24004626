"""The steering and decoding lab: steering hooks, decoding rules, experiments."""
