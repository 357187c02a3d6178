"""Spec problems: ``SpecError``, which the CLI prints one line per problem with exit 2, and the "did you mean"."""

from __future__ import annotations

import difflib
from typing import Any


class SpecError(Exception):
    """A spec the user must fix: one line per problem. The CLI prints them and exits 2, without a traceback."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(dict.fromkeys(problems))
        super().__init__("\n".join(self.problems))


def suggest(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
