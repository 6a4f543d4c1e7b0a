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

import codecs
import csv
import io
import json
import os
import stat
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.persona.bounds import MAX_MESSAGE_CHARS as _MAX_CHARS

FORMATS = ("messages", "prompt-completion", "alpaca", "guppylm", "qa")
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
        if forced not in FORMATS:
            raise GuppyError(
                f"--format {forced}: not a format guppyforge reads. Use one of {', '.join(FORMATS)}"
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
    """A cell as text: a JSON or parquet number as written; None for no value, or one that is
    no text (true, a list, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


def _not_text(value) -> str:
    """What a value that is no text is, for a bad row's line: `true, not text`."""
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return f"{shown[:40]}{'...' if len(shown) > 40 else ''}, not text"


def _check_turns(messages, where: str = "messages") -> list[tuple[str, str]] | str:
    """The (role, content) pairs of a conversation, or what is wrong with it."""
    if not isinstance(messages, list) or not messages:
        return f"'{where}' is not a non-empty list of messages"
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"message {i + 1} has no 'role'"
        if m.get("content") is None:
            return f"message {i + 1} has no 'content'"
        if not isinstance(m["content"], str):  # JSON's own types: a number is not a message
            return f"message {i + 1}: 'content' is {_not_text(m['content'])}"
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
    for name, value in zip(names, (user, reply), strict=True):
        if value is None:
            cell = row.get(name)
            return f"missing '{name}'" if cell is None else f"'{name}' is {_not_text(cell)}"
    if not user.strip():
        return f"empty prompt ('{names[0]}')"
    if not reply.strip():
        return f"empty reply ('{names[1]}')"
    return [("user", user), ("assistant", reply)]


def looks_utf16(head: bytes) -> bool:
    """Is this the start of UTF-16 text: its byte-order mark, or a NUL beside every letter?"""
    start = head[:1024]
    return start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (
        start.count(0) > len(start) // 4
    )


def not_utf8(path: Path, head: bytes, where: str) -> GuppyError:
    """The error for a file that is not UTF-8 text: `where` is the place of its first bad byte."""
    why = "not UTF-8 (UTF-16?)" if looks_utf16(head) else f"{where}: not UTF-8"
    return GuppyError(f"{path}: {why}. Save it as UTF-8")


def check_csv_header(path: Path, columns: list[str]) -> None:
    """Refuse a CSV header that no shape can be read from: another separator, a repeated name."""
    if len(columns) == 1:
        sep = next((s for s in (";", "\t", "|") if s in columns[0]), None)
        if sep:
            raise GuppyError(
                f"{path}: one column `{columns[0][:60]}`: separated by {sep!r}? guppyforge "
                "reads comma-separated CSV. Save it with commas"
            )
    seen = set()
    for name in columns:
        if name in seen:
            raise GuppyError(f"{path}: the column `{name}` appears twice. Rename one of them")
        seen.add(name)


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
        raise not_utf8(path, raw, f"byte {e.start:,}") from None
    if "\0" in text:
        if looks_utf16(raw):
            raise not_utf8(path, raw, "")
        raise GuppyError(f"{path}: holds NUL bytes: not a text file. Save it as UTF-8 text")
    rows: list = []
    lines_read = 0
    try:
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))
            check_csv_header(path, list(reader.fieldnames or []))
            rows = list(reader)
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
        if None in row:  # csv.DictReader's key for the cells past the header's
            raise GuppyError(
                f"{path}: row {n}: more cells than the header has columns. Quote a cell "
                'that holds a comma ("a, b")'
            )
    return rows


# --- A persona's examples_file (format 1.3): hand-written conversations in one of the shapes.
#
# The path is the persona's to name, and a persona comes from strangers: it must lead to a
# regular file inside the persona's own folder (after links are followed), so a shared persona
# cannot pull ~/.ssh/id_rsa into a dataset. It may not take the name of a file guppyforge writes
# beside a copy of the persona (the dataset and run folders copy the file along, at the same
# relative path, so the copy loads exactly as the original did).


def _taken(rel: str) -> bool:
    """Does `rel` (already normalised) name a file, or lie in a folder, that a dataset or run
    folder writes for itself? Read from files.KIND_FILES, so a new file there is covered here."""
    from guppyforge.files import KIND_FILES, MARKER

    ours = {*KIND_FILES["dataset"], *KIND_FILES["run"], MARKER}
    folders = {p.partition("/")[0] for p in ours if "/" in p} | {"trace"}  # why's index cache
    first = rel.partition("/")[0].lower()
    return rel.lower() in {p.lower() for p in ours} or first in folders


def examples_path(persona_path: Path, written: object) -> tuple[str, Path] | str:
    """(relative path, resolved path) of an examples_file as written in the persona at
    `persona_path`, or the problem with it (a sentence and its fix)."""
    if not isinstance(written, str) or not written.strip():
        return "must be a file name, e.g. examples.jsonl. Write the path relative to the persona"
    rel = written.strip()
    parts = Path(rel).parts
    if Path(rel).is_absolute() or "\\" in rel or ".." in parts or rel.startswith("~"):
        return (
            f"'{rel}' leads outside the persona's folder. Put the file beside the persona (or "
            "below it) and write its relative path"
        )
    if any(c in rel for c in "#@\0"):
        return f"'{rel}' holds #, @ or NUL. Rename the file"
    if Path(rel).suffix.lower() not in SMALL_SUFFIXES:
        return f"'{rel}' is not a .jsonl, .json or .csv file. Convert it"
    if _taken(Path(*parts).as_posix()):  # normalised: `./config.json`, `stats.json/` too
        return f"'{rel}' is a name guppyforge writes beside a persona's copy. Rename the file"
    home = Path(persona_path).resolve().parent
    target = (home / rel).resolve()
    if not target.is_relative_to(home):  # a link that leads out
        return f"'{rel}' is a link that leads outside the persona's folder. Copy the file in"
    if not target.exists():
        return f"'{rel}': no such file beside {Path(persona_path).name}. Check the name"
    return Path(*parts).as_posix(), target


def examples_rows(
    path: Path, rel: str, forced: str | None, max_bytes: int, max_rows: int
) -> tuple[list[tuple[int, str, list[tuple[str, str]]]], list[str]]:
    """([(row, topic, turns)], [problem lines]) of an examples_file: each row converted, or
    named by its row with what is wrong (`hand.jsonl: row 3: missing 'answer'`)."""
    records = read_small_file(path, max_bytes, max_rows)
    if not records:
        return [], [f"{rel}: no rows. Add hand-written conversations, or remove examples_file"]
    try:
        shape, mapping = recognise(list(records[0]), forced, Path(rel))
    except GuppyError as e:
        fix = " (in a persona: examples_file: {path: FILE, format: SHAPE})"
        return [], [str(e).replace("--format", "format:") + fix]
    out, bad = [], []
    for n, record in enumerate(records, start=1):
        turns = convert(record, shape, mapping)
        if isinstance(turns, list) and turns[0][0] == "system":
            turns = "a system message: a persona's examples are user and assistant turns"
        if isinstance(turns, list):
            too_long = next((c for _, c in turns if len(c) > _MAX_CHARS), None)
            if too_long is not None:
                turns = f"a message of {len(too_long):,} characters, over the {_MAX_CHARS:,} limit"
        if isinstance(turns, str):
            bad.append(f"{rel}: row {n}: {turns}")
            continue
        topic = (text_of(record.get(mapping.get("topic", ""))) or "").strip()
        out.append((n, topic, turns))
    return out, bad


def examples_file_of(persona_path: Path) -> tuple[str, Path] | None:
    """(relative path, resolved path) of the examples_file a persona file names, or None when
    it names none (or one that would not load): what a copy of the persona must carry along."""
    from guppyforge.persona.yamlsafe import read_yaml

    try:
        data = read_yaml(persona_path).data
    except GuppyError:
        return None
    value = data.get("examples_file") if isinstance(data, dict) else None
    if isinstance(value, dict):
        value = value.get("path")
    found = examples_path(persona_path, value) if value is not None else None
    return found if isinstance(found, tuple) and found[1].is_file() else None
