"""Errors that reach users as one clear line, never a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message is shown as is."""


class ModelNotFound(UserError):
    """The model id or path resolves to nothing loadable."""


class UnsafeWeights(UserError):
    """The model offers only pickle-based weights, which TokenPrism refuses to load."""


class InputTooLong(UserError):
    """A text is longer than the model's context window."""


class DatabaseLocked(UserError):
    """Another process holds the DuckDB file."""


class ReadOnlyViolation(UserError):
    """A statement given to the read-only SQL interface would change data."""


class NameTaken(UserError):
    """A name that belongs to something shipped (a probe) and cannot be reused (409)."""


class LimitExceeded(UserError):
    """A request asks for more than a server limit allows (422), e.g. too many items."""


class QueryLimit(UserError):
    """A SQL query ran past its time or memory limit and was stopped (400)."""


class QueueFull(UserError):
    """The queue holds ``max_queued_jobs`` jobs already (429 with ``Retry-After``)."""

    retry_after_s = 30
