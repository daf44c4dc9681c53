"""Errors that carry a one-line, user-facing reason (no traceback is ever shown for them), and the exit codes.

Exit codes of every subcommand (also in the README):

| code | meaning |
|---|---|
| 0 | done (bad inputs may have been reported and skipped) |
| 1 | nothing usable came out (every input rejected or failed), or `--strict` and something was rejected |
| 2 | usage or input error: bad option, unreadable or unverifiable input, refused before or without output |
| 3 | output error: the system refused a write (disk full, read-only, permission); the output is left as it was |
| 130 | interrupted (Ctrl-C); completed shards are kept and the same command resumes (`infer`: says how many rows were kept; `--resume` continues) |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_OUTPUT = 3
EXIT_INTERRUPTED = 130


def one_line(text: object) -> str:
    """`text` on one line: control characters (a newline in a file name, say) written as escapes."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecllmError(Exception):
    """A problem with the user's input or options; `str()` is the one line shown on stderr."""

    exit_code = EXIT_USAGE


# Optional packages, each with the extra of pyproject.toml that installs it: a command that needs one and does not
# find it says so in one line with the install command (`missing_extra`, through cli.user_errors).
EXTRAS = {"deepspeed": "gpu", "bitsandbytes": "gpu", "ray": "ray", "specutils": "specutils"}


def missing_extra(exc: ImportError) -> SpecllmError | None:
    """The one-line error for an optional package that is not installed, None for any other import failure."""
    package = (getattr(exc, "name", None) or "").partition(".")[0]
    if package not in EXTRAS:
        return None
    return SpecllmError(f"{package} is not installed (optional): pip install 'specllm[{EXTRAS[package]}]'")


class OutputError(SpecllmError):
    """The output cannot be written (no space, read-only, permission): exit status 3."""

    exit_code = EXIT_OUTPUT


class SpectrumRejected(SpecllmError):
    """One spectrum cannot be used; the run goes on. `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Interrupted(Exception):
    """A run stopped by Ctrl-C (or SIGTERM); `str()` says truthfully what was kept and how to continue."""
