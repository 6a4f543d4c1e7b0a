"""Chat data from elsewhere, as `messages` rows: the shapes people already have (messages,
prompt-completion, alpaca, guppylm, qa), recognised by their columns in persona/chat_rows.py,
the same recognition a persona's `examples_file` gets.

A file (JSONL, JSON, CSV, parquet) or a folder of them is read with `datasets`, one file at a
time so every bad row can be named by its file and row (rows count from 1; a CSV's header is
not a row). A CSV's cells are text, as written (`1,001.50`, `NA`, `True`); JSON and parquet keep
their own types. A bad row is left out, said and counted, never dropped in silence; past
`MAX_BAD_SHARE` of the rows the data is refused. In a folder, files named for a test split
(`test`, `valid`, `dev`, `eval`) are the test split, and the files guppyforge writes for itself
(stats.json, config.json, metrics.jsonl...) are never data; a folder `generate` wrote is read as
the dataset it is. Without a test file, a leak-free split by prompt (split.py) is made with a
fixed seed, so train, eval and why all see the same one.
"""

from __future__ import annotations

import codecs
import csv
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.files import KIND_FILES, MARKER, kind_of, require_regular
from guppyforge.persona.chat_rows import (
    check_csv_header,
    convert,
    describe,
    looks_utf16,
    not_utf8,
    recognise,
)
from guppyforge.persona.chat_rows import text_of as _text

# What each file type is read as by `datasets`.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_BAD_SHARE = 0.01  # a few odd rows are left out; more means a misread shape or broken data
MAX_SHOWN = 20  # bad rows printed one line each; the rest are counted
TEST_SHARE = 0.05  # the on-the-fly test split, as `generate --test-size` defaults to
SPLIT_SEED = 0  # fixed, so that eval and why rebuild the split train made
# A BPE token of English text covers ~4 characters; a row with 8 per token of context cannot fit.
CHARS_PER_TOKEN = 8
_TEST_NAME = re.compile(r"(^|[^a-z])(test|valid|validation|dev|eval)([^a-z]|$)")
CHUNK = 1 << 20  # bytes read at a time when checking that a file is UTF-8
# What guppyforge writes into its own folders: a dataset's and a run's files, and an export's,
# a sweep's and why's index's metadata. Never chat data, wherever it lies.
_WRITTEN = {
    name.rpartition("/")[2].lower() for name in (*KIND_FILES["dataset"], *KIND_FILES["run"], MARKER)
} | {"generation_config.json", "onnx_io.json", "page.json", "sweep.json", "meta.json"}

Say = Callable[[str], None]


def data_files(path: Path) -> list[Path]:
    """The files of `path` (a file, or a folder searched recursively) that `datasets` reads."""
    if path.is_file():
        if path.suffix.lower() not in BUILDERS:
            raise GuppyError(
                f"{path}: not a file type guppyforge reads (.jsonl, .json, .csv, "
                ".parquet). Convert it, or rename it for what it holds"
            )
        return [path]
    require_regular(path) if not path.is_dir() else None
    found = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in BUILDERS
        and p.name.lower() not in _WRITTEN
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise GuppyError(
            f"{path}: not a dataset folder: no .jsonl, .json, .csv or .parquet file. Give a "
            "folder of chat data, or one written by `guppyforge generate`"
        )
    return found


def _utf8_head(path: Path) -> str:
    """The first CHUNK of a text file, once all of it is known to be UTF-8: pyarrow keeps bad
    bytes as they are, and the error comes later, naming no file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    head, at, lines = None, 0, 1
    with path.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            pending = len(decoder.getstate()[0])  # the start of a character the last chunk cut
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                line = lines + chunk[: max(e.start - pending, 0)].count(b"\n")
                where = f"line {line:,} (byte {at - pending + e.start:,})"
                raise not_utf8(path, chunk if head is None else b"", where) from None
            if not chunk:
                return head or ""
            if head is None:
                if looks_utf16(chunk):  # valid UTF-8 when it is ASCII, NULs and all
                    raise not_utf8(path, chunk, "")
                head = text.removeprefix("\ufeff")
            at, lines = at + len(chunk), lines + chunk.count(b"\n")


def _csv_header(path: Path) -> tuple[list[str], bool]:
    """(the header's column names, whether a row follows it)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        check_csv_header(path, columns)
        return columns, any(any(cell.strip() for cell in row) for row in reader)


def no_rows(path: Path) -> str | None:
    """Why a data file holds no rows ('empty file', 'only a header'...), or None if it has some.
    A text file is refused first if it is not UTF-8, a CSV if it is not comma-separated:
    `datasets` would say so in words that name neither the file nor the fix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return None if pq.ParquetFile(path).metadata.num_rows else "no rows (an empty table)"
        except Exception:  # a damaged file: read_rows names what pyarrow says of it
            return None
    head = _utf8_head(path)
    if not head.strip():
        return "empty file"
    if suffix == ".json" and re.match(r"\s*\[\s*\]", head):
        return "no rows (an empty list, [])"
    if suffix == ".csv" and not _csv_header(path)[1]:
        return "no rows (only a header)"
    return None


def read_rows(path: Path) -> list[dict]:
    """The rows of one data file, as dicts, read by `datasets`. Call `no_rows` first."""
    import datasets

    require_regular(path)
    builder = BUILDERS[path.suffix.lower()]
    options = {}
    if builder == "csv":
        columns = _csv_header(path)[0]
        # Text is text: pandas' guesses would train `1,001.50` as 1.5, and `NA`, `None`, `null`,
        # `True` as no answer at all.
        options = {
            "column_names": columns,
            "header": 0,
            "features": datasets.Features({c: datasets.Value("string") for c in columns}),
            "keep_default_na": False,
            "na_filter": False,
        }
    datasets.disable_progress_bars()
    # A cache of its own, gone after the read: `datasets` keys its cache on a file's path and
    # time, so an edit that keeps both would be read as the old rows.
    with tempfile.TemporaryDirectory(prefix="guppyforge-read-") as cache:
        try:
            ds = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache, **options
            )
        except Exception as e:  # datasets raises many types for a file it cannot parse
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise GuppyError(
                f"{path}: cannot be read as {builder} ({first}). Mend the file, or convert it "
                "to JSONL"
            ) from None
        return ds.to_list()


def read_foreign(
    path: str | Path, forced: str | None = None, context: int | None = None, say: Say = print
):
    """A DatasetDict (train, test) of `messages`, `topic`, `template_id` from chat data in any
    shape of chat_rows.FORMATS. Its `source` attribute holds what config.json records about it."""
    import datasets

    from guppyforge.dataset.folder import fingerprint
    from guppyforge.dataset.split import prompt_key, split_by_prompt

    path = Path(path)
    if path.is_dir() and any(path.glob("data/*.parquet")) and kind_of(path) == "dataset":
        if forced != "messages":
            raise GuppyError(
                f"{path}: a dataset `guppyforge generate` wrote: its rows are messages, not "
                f"{forced}. Leave out --format"
            )
        from guppyforge.dataset.folder import load_splits

        return load_splits(path, say=say)
    files = data_files(path)
    max_chars = context * CHARS_PER_TOKEN if context else None
    rows: dict[str, list] = {"train": [], "test": []}
    bad: list[str] = []
    total, shape, mapping = 0, None, None
    for f in files:
        empty = no_rows(f)
        if empty and path.is_file():
            raise GuppyError(f"{f}: {empty}. Give a file with rows of chat data")
        if empty:
            say(f"{f}: {empty}: left out")
            continue
        records = read_rows(f)
        columns = list(records[0])
        file_shape, file_map = recognise(columns, forced, f)
        if shape and file_shape != shape:
            raise GuppyError(
                f"{f}: holds {file_shape} rows, the files before it {shape}. Keep "
                "one shape per folder, or give one file"
            )
        shape, mapping = file_shape, file_map
        # A file given alone is the data, whatever its name: `chat_dev_2024.jsonl` is not a test set.
        split = "test" if path.is_dir() and _TEST_NAME.search(f.stem.lower()) else "train"
        name = f.relative_to(path).as_posix() if path.is_dir() else f.name
        for n, record in enumerate(records, start=1):
            total += 1
            turns = convert(record, shape, mapping)
            if isinstance(turns, list) and max_chars:
                chars = sum(len(c) for _, c in turns)
                if chars > max_chars:
                    turns = (
                        f"{chars:,} characters: far too long for the {context}-token "
                        "context (shorten it, or use a longer-context --preset)"
                    )
            if isinstance(turns, str):
                bad.append(f"{f}: row {n}: {turns}")
                continue
            topic = _text(record.get(mapping.get("topic", ""))) or ""
            if any("\0" in text for _, text in turns) or "\0" in topic:
                raise GuppyError(  # no text holds one: a binary file, or a broken export
                    f"{f}: row {n}: holds a NUL byte. Remove it, or export the file again as text"
                )
            rows[split].append((tuple(turns), topic.strip(), f"{name}#{n}", len(turns) // 2))
    if shape is None:
        raise GuppyError(f"{path}: every file is empty. Give a file with rows of chat data")
    good = len(rows["train"]) + len(rows["test"])
    topics = len({r[1] for split in rows.values() for r in split if r[1]})
    say(describe(shape, mapping, total, topics))
    for line in bad[:MAX_SHOWN]:
        say(f"bad row: {line}")
    if len(bad) > MAX_SHOWN:
        say(f"bad row: ... and {len(bad) - MAX_SHOWN:,} more")
    if bad:
        share = len(bad) / total
        if share > MAX_BAD_SHARE or not good:
            raise GuppyError(
                f"{path}: {len(bad):,} of {total:,} rows are bad ({share:.1%}; the "
                f"limit is {MAX_BAD_SHARE:.0%}). Mend the rows named above, or give "
                "--format if the shape was misread"
            )
        say(f"{len(bad):,} bad rows left out, {good:,} kept")
    if not rows["test"]:
        keys = [prompt_key(r[0]) for r in rows["train"]]
        if len(set(keys)) < 2:
            raise GuppyError(
                f"{path}: fewer than two distinct prompts, so no test split can "
                "avoid the train one. Add rows, or a test file"
            )
        share = max(TEST_SHARE, 1 / len(keys))
        train_i, test_i = split_by_prompt(keys, share, SPLIT_SEED)
        rows = {
            "train": [rows["train"][i] for i in train_i],
            "test": [rows["train"][i] for i in test_i],
        }
        say(
            f"no test split in the data: {len(rows['test']):,} rows held out by prompt "
            f"(seed {SPLIT_SEED}), {len(rows['train']):,} for training; no test prompt is in "
            "train"
        )
    elif not rows["train"]:
        raise GuppyError(
            f"{path}: only test files ({', '.join(f.name for f in files)}). Add the training rows"
        )
    else:
        say(f"test split from the files named for it: {len(rows['test']):,} rows")
    splits = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {
                    "messages": [[{"role": r, "content": c} for r, c in row[0]] for row in part],
                    "topic": [row[1] for row in part],
                    "template_id": [row[2] for row in part],
                }
            )
            for name, part in rows.items()
        }
    )
    splits.source = {
        "format": shape,
        "columns": mapping,
        "fingerprint": fingerprint(rows),
        "rows_read": total,
        "bad_rows": len(bad),
    }
    return splits
