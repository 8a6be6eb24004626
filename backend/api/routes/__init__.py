"""One router module per resource; :mod:`tokenprism.backend.api.app` includes them all."""
