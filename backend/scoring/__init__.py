"""Encoding (chat templates, offsets), the one-pass runner, optional metric families."""
