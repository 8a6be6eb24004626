"""The job queue: worker, progress, cancel, resume."""
