"""The library's exception and warning types."""

from __future__ import annotations


class IncqError(ValueError):
    """Bad input to an incq function.

    The message always reads ``"<function>: <argument> <expected>, got <value>"`` so that the
    function, the argument and the offending value are named in one line.
    """


class IncqWarning(UserWarning):
    """A lossy or surprising operation that the caller explicitly asked for."""
