"""Chat rows in the shapes people already have, recognised by their columns, as turns.

    messages            TRL's conversational rows: a list of {role, content}
    prompt-completion   `prompt` and `completion`: two strings, or TRL's two lists of messages
    alpaca              `instruction` (+ `input`) -> user, `output` -> assistant
    guppylm             `input` -> user, `output` -> assistant, `category` -> topic
    qa                  `question`/`answer` (or `q`/`a`), as a spreadsheet exports them

The recognition lives in the persona layer so that a persona's `examples_file` and
`train`'s data of one's own (dataset/formats.py) read the same shapes the same way. Here a
small file is read with the standard library (JSONL, JSON, CSV; rows count from 1, a CSV's
header is not a row); the dataset layer reads large ones, parquet too, with `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

from guppyforge.errors import GuppyError

SHAPES = ("messages", "prompt-completion", "alpaca", "guppylm", "qa")
TOPIC_COLUMNS = ("category", "topic")  # an optional column that becomes each row's topic
SMALL_SUFFIXES = (".jsonl", ".json", ".csv")  # what `read_small_file` reads


def recognise(columns: list[str], forced: str | None, path: Path) -> tuple[str, dict[str, str]]:
    """(shape, {role: column}) for a file's columns; `forced` (--format) overrides the guess."""
    cols = {c.lower(): c for c in columns}

    def col(*names: str) -> str | None:
        return next((cols[n] for n in names if n in cols), None)

    found = {
        "messages": {"messages": col("messages")},
        "prompt-completion": {"prompt": col("prompt"), "completion": col("completion")},
        "alpaca": {"instruction": col("instruction"), "output": col("output")},
        "guppylm": {"input": col("input"), "output": col("output")},
        "qa": {"question": col("question", "q"), "answer": col("answer", "a")},
    }
    fits = [s for s, need in found.items() if all(need.values())]
    if "alpaca" in fits:  # alpaca's input/output are guppylm's columns too: the instruction decides
        fits.remove("guppylm")
    if forced:
        if forced not in SHAPES:
            raise GuppyError(
                f"--format {forced}: not a shape guppyforge reads. Use one of {', '.join(SHAPES)}"
            )
        missing = [k for k, v in found[forced].items() if not v]
        if missing:
            raise GuppyError(
                f"{path}: --format {forced} needs the column(s) {', '.join(missing)}"
                f"; the file has {', '.join(columns[:8]) or 'none'}"
            )
        shape = forced
    elif len(fits) == 1:
        shape = fits[0]
    elif fits:
        raise GuppyError(
            f"{path}: its columns fit {' and '.join(fits)}. Say which with --format {fits[0]}"
        )
    else:
        raise GuppyError(
            f"{path}: columns {', '.join(columns[:8]) or 'none'} are no chat shape "
            "guppyforge knows (messages; prompt/completion; instruction/input/"
            "output; input/output/category; question/answer). Rename the columns, "
            "or give --format"
        )
    mapping = dict(found[shape])
    if shape == "alpaca" and col("input"):
        mapping["input"] = col("input")
    if shape != "messages" and (topic := col(*TOPIC_COLUMNS)):
        mapping["topic"] = topic
    elif shape == "messages" and col("topic"):
        mapping["topic"] = col("topic")
    return shape, mapping


def describe(shape: str, m: dict[str, str], rows: int, topics: int) -> str:
    """The line saying what was recognised, e.g. 'alpaca: instruction + input -> user, ...'."""
    if shape == "messages":
        how = f"{m['messages']} -> the conversation as it is"
    elif shape == "alpaca":
        user = " + ".join(filter(None, [m["instruction"], m.get("input")]))
        how = f"{user} -> user, {m['output']} -> assistant"
    else:
        ask, answer = {
            "prompt-completion": ("prompt", "completion"),
            "guppylm": ("input", "output"),
            "qa": ("question", "answer"),
        }[shape]
        how = f"{m[ask]} -> user, {m[answer]} -> assistant"
    if "topic" in m:
        how += f", {m['topic']} -> topic ({topics} topics)"
    return f"{shape}: {how}; {rows:,} rows"


def text_of(value) -> str | None:
    """A cell as text: numbers a CSV reader typed become strings again; empty is None."""
    if value is None or (isinstance(value, float) and value != value):  # NaN: an empty cell
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


def _check_turns(messages, where: str = "messages") -> list[tuple[str, str]] | str:
    """The (role, content) pairs of a conversation, or what is wrong with it."""
    if not isinstance(messages, list) or not messages:
        return f"'{where}' is not a non-empty list of messages"
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"message {i + 1} has no 'role'"
        if not isinstance(m.get("content"), str):
            return f"message {i + 1} has no 'content' text"
        out.append((m["role"], m["content"]))
    body = out[1:] if out[0][0] == "system" else out
    for i, (role, content) in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            return (
                f"message {i + 1 + len(out) - len(body)} is '{role}' where '{want}' "
                "belongs (roles go user, assistant, user, ...; a system message only first)"
            )
        if not content.strip():
            return f"{'empty reply' if role == 'assistant' else 'empty prompt'} in message {i + 1}"
    if not body or body[-1][0] != "assistant":
        return "no reply: the conversation does not end with an assistant message"
    return out


def convert(row: dict, shape: str, m: dict[str, str]) -> list[tuple[str, str]] | str:
    """One row as (role, content) pairs, or the problem that keeps it out."""
    if shape == "messages":
        return _check_turns(row.get(m["messages"]), m["messages"])
    if shape == "prompt-completion":
        prompt, completion = row.get(m["prompt"]), row.get(m["completion"])
        if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational form
            if not isinstance(prompt, list) or not isinstance(completion, list):
                return "prompt and completion must both be texts or both be lists of messages"
            return _check_turns(prompt + completion)
        user, reply = text_of(prompt), text_of(completion)
        names = (m["prompt"], m["completion"])
    elif shape == "alpaca":
        instruction, extra = (
            text_of(row.get(m["instruction"])),
            text_of(row.get(m.get("input", ""))),
        )
        user = instruction if not (extra and extra.strip()) else f"{instruction}\n\n{extra}"
        user = None if instruction is None else user
        reply, names = text_of(row.get(m["output"])), (m["instruction"], m["output"])
    else:  # guppylm, qa: one question, one answer
        ask, say = ("input", "output") if shape == "guppylm" else ("question", "answer")
        user, reply, names = text_of(row.get(m[ask])), text_of(row.get(m[say])), (m[ask], m[say])
    if user is None:
        return f"missing '{names[0]}'"
    if reply is None:
        return f"missing '{names[1]}'"
    if not user.strip():
        return f"empty prompt ('{names[0]}')"
    if not reply.strip():
        return f"empty reply ('{names[1]}')"
    return [("user", user), ("assistant", reply)]


def read_small_file(path: Path, max_bytes: int, max_rows: int) -> list[dict]:
    """The rows of a small JSONL, JSON (a list of objects) or CSV file, as dicts, read with the
    standard library. Bounded: a FIFO or device is refused before it is opened, and a file
    past `max_bytes` or `max_rows` is refused with the limit."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SMALL_SUFFIXES:
        raise GuppyError(
            f"{path}: not a file type guppyforge reads here (.jsonl, .json, .csv). Convert it"
        )
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then says what it is.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise GuppyError(f"{path}: cannot be read ({e.strerror}). Check the path") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise GuppyError(f"{path}: not a regular file. Give the file itself")
        if info.st_size > max_bytes:
            raise GuppyError(
                f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} limit for a file "
                "a persona reads. Keep the hand-written rows, or train on the file instead"
            )
        raw = f.read(max_bytes + 1)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GuppyError(f"{path}: not UTF-8 text (byte {e.start:,}). Save it as UTF-8") from None
    if "\0" in text:
        raise GuppyError(f"{path}: holds NUL bytes: not a text file. Save it as UTF-8 text")
    rows: list = []
    lines_read = 0
    try:
        if suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        elif suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise GuppyError(f"{path}: not a list of rows. Write [{{...}}, {{...}}]")
        else:
            for line in text.splitlines():
                lines_read += 1
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) > max_rows:
                    break
    except (ValueError, RecursionError, csv.Error) as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        where = f":{lines_read}" if suffix == ".jsonl" else ""
        raise GuppyError(f"{path}{where}: cannot be read ({first}). Mend the file") from None
    if len(rows) > max_rows:
        raise GuppyError(
            f"{path}: more than the {max_rows:,}-row limit for a file a persona reads. Keep "
            "the hand-written rows, or train on the file instead"
        )
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise GuppyError(f'{path}: row {n}: not an object of columns. Write {{"q": ...}}')
    return rows
