"""The one error of subject lists."""

from __future__ import annotations


class SubjectListError(ValueError):
    """A subject list (or pseudonym mapping) that cannot be used.

    The message starts with ``line N:`` when a line is to blame; ``line`` is
    that number (or ``None``).
    """

    def __init__(self, problem: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {problem}" if line is not None else problem)
