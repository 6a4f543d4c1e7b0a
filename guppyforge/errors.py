"""One error type for everything a user can get wrong, printed as one line."""

from __future__ import annotations


class GuppyError(Exception):
    """A user-facing error: the CLI prints `error: <message>` and exits 1, no traceback.

    Messages name the file (and line:column when known), the place, and the fix, e.g.
    `personas/cat.yaml:12:5: topics.food.ask[2]: unknown symbol 'fod'. Did you mean 'food'?`
    A plain Exception, so the persona and dataset layers work without click installed.
    """


def where(path, line: int | None = None, column: int | None = None) -> str:
    """Format a `file:line:column` prefix, leaving out the parts that are unknown."""
    out = str(path)
    if line is not None:
        out += f":{line}"
        if column is not None:
            out += f":{column}"
    return out
