"""Errors that carry a one-line, user-facing reason (no traceback is ever shown for them)."""

from __future__ import annotations


class SpecllmError(Exception):
    """A problem with the user's input or options; `str()` is the one line shown on stderr."""


class SpectrumRejected(SpecllmError):
    """One spectrum cannot be used; the run goes on. `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Interrupted(Exception):
    """A run stopped by Ctrl-C (or SIGTERM); `str()` says truthfully what was kept and how to continue."""
