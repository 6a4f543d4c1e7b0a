"""Checks on what a Character Card brings in: nesting depth, control characters, how much text
(bounded before any YAML is built), and the persona an import would write (which must load
before it is written).

Cards come from strangers and from other tools: a card nested 100,000 levels deep must be a line
about depth (not Python's recursion limit, nor "not UTF-8"), and a name with terminal escape
codes must not reach a persona file (the schema refuses them) or a terminal.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from guppyforge.errors import GuppyError
from guppyforge.persona import limits
from guppyforge.persona.load import load_persona
from guppyforge.persona.yamlsafe import read_yaml

_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')  # unrolled: linear on a 30 MB string
_PAIR = re.compile(rb"\[\]|\{\}")
# Control characters other than newline and tab: a persona refuses them (and a terminal obeys them).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def deeper_than(raw: bytes, limit: int) -> bool:
    """Is valid JSON `raw` nested more than `limit` levels? Without recursion: strings dropped,
    then each pass removes the innermost `[]`/`{}` pairs; what is left after `limit` passes is
    deeper (or unbalanced, which json.loads then reports)."""
    brackets = _STRINGS.sub(b"", raw).translate(None, delete=bytes(set(range(256)) - set(b"[]{}")))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _PAIR.sub(b"", brackets)
    if not brackets:
        return False
    try:
        json.loads(raw)
    except ValueError:  # JSONDecodeError, or a number too long to read
        return False  # unbalanced: json.loads says where
    except (RecursionError, UnicodeDecodeError):
        return True
    return True


def strip_controls(value: Any) -> Any:
    """The card with control characters stripped from every text (keys included)."""
    if isinstance(value, str):
        return _CONTROL.sub("", value)
    if isinstance(value, list):
        return [strip_controls(v) for v in value]
    if isinstance(value, dict):
        return {_CONTROL.sub("", k): strip_controls(v) for k, v in value.items()}
    return value


def text_chars(value: Any) -> int:
    """Characters of text in a card's value (keys included), without recursion."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(k) for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def check_card_text(value: Any, card_path: Path) -> None:
    """Refuse, before any conversion, a card whose text cannot fit the persona import writes.

    Everything a card holds goes into the persona (used, or kept under extensions), so text
    past the persona's 1 MiB can only be refused; finding that out by building the YAML of a
    30 MB card took minutes and gigabytes.
    """
    chars = text_chars(value)
    if chars > limits.MAX_FILE_BYTES:
        raise GuppyError(f"{card_path}: holds {chars / 2**20:.1f} MiB of text, more than the "
                         f"{limits.MAX_FILE_BYTES >> 20} MiB a persona may hold (embedded "
                         "images, a big lorebook?). Remove them from the card, import it "
                         "again")  # fmt: skip


def check_persona_text(text: str, card_path: Path, out: Path, full: bool) -> None:
    """Load the persona before it is written: import never leaves a file that fails validate."""
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / out.name
        trial.write_text(text, encoding="utf-8")
        try:
            load_persona(trial) if full else read_yaml(trial)
        except GuppyError as exc:
            why = str(exc).replace(str(trial), str(out))
            raise GuppyError(f"{card_path}: the persona made from it would not validate, so "
                             f"nothing was written ({why})") from None  # fmt: skip
