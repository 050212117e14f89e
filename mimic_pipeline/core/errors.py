"""Errors for bad user input: each names the file, what is wrong with it and how to fix it."""

from __future__ import annotations

from pathlib import Path


class InputFileError(ValueError):
    """A user-supplied file cannot be used as it is.

    The message always has three parts so that a user never has to read a traceback to act:
    the file, the problem, and the fix.
    """

    def __init__(self, path: str | Path, problem: str, fix: str):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}\n  fix: {fix}")


def preview(values, limit: int = 5) -> str:
    """A short, stable rendering of the first offending values for an error message."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{shown}{more}"
