"""Writing files whole or not at all, refusing inputs that are not files, and the text tables
commands print.

Every file guppyforge writes goes through `atomic_path`: a temp file in the same folder (so the
same file system), then one `os.replace`. Readers see the old file or the new one, never half of
one, and a crash or Ctrl-C leaves no partial file under the real name.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from guppyforge.errors import GuppyError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write; on success it replaces `path` in one step, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; what we write is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as they are) to `path` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def require_regular(path: str | Path, fix: str = "Give the file itself") -> None:
    """Refuse a FIFO, device or socket as an input before opening it: reading one may never end.

    A missing file passes: the open that follows says so in its own words.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise GuppyError(f"{path}: {kind}, not a regular file. {fix}")


# Control characters (bar newline and tab) and the bidirectional overrides: a persona or a model
# can hold them, and a terminal would obey them (clear the screen, retitle the window, hide text).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text safe to print to a terminal: control characters shown as escapes, e.g. `\\x1b`."""
    return _CONTROL.sub(lambda m: ascii(m[0])[1:-1], text)


def columns(text: str) -> int:
    """Terminal columns: CJK characters take two, so Japanese names still line up."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def text_table(rows: Sequence[Sequence[object]], indent: str = "", align: str = "") -> str:
    """Rows (the header first) as padded columns. `align` has an l or r per column; by default
    the first column is left-aligned (names) and the rest right-aligned (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(columns(row[i]) for row in cells) for i in range(len(cells[0]))]
    align = align or "l" + "r" * (len(widths) - 1)
    lines = []
    for row in cells:
        padded = [
            c + " " * (w - columns(c)) if a == "l" else " " * (w - columns(c)) + c
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        lines.append((indent + "  ".join(padded)).rstrip())
    return "\n".join(lines)
