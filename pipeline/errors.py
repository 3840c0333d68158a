"""The base class of errors a person can act on: the CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, config or environment; the message names the problem and the fix."""
