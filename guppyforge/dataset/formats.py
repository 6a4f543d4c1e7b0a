"""Chat data from elsewhere, as `messages` rows: the shapes people already have (messages,
prompt-completion, alpaca, guppylm, qa), recognised by their columns in persona/chat_rows.py,
the same recognition a persona's `examples_file` gets.

A file (JSONL, JSON, CSV, parquet) or a folder of them is read with `datasets`, one file at a
time so every bad row can be named by its file and row (rows count from 1; a CSV's header is
not a row). A bad row is left out, said and counted, never dropped in silence; past
`MAX_BAD_SHARE` of the rows the data is refused. Files named for a test split (`test`, `valid`,
`dev`, `eval`) are the test split; without one, a leak-free split by prompt (split.py) is made
with a fixed seed, so train, eval and why all see the same one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.files import require_regular
from guppyforge.persona.chat_rows import convert, describe, recognise
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
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise GuppyError(
            f"{path}: not a dataset folder: no .jsonl, .json, .csv or .parquet file. Give a "
            "folder of chat data, or one written by `guppyforge generate`"
        )
    return found


def read_rows(path: Path) -> list[dict]:
    """The rows of one data file, as dicts, read by `datasets`."""
    import datasets

    require_regular(path)
    builder = BUILDERS[path.suffix.lower()]
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for a file it cannot parse
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise GuppyError(
            f"{path}: cannot be read as {builder} ({first}). Mend the file, or convert it to JSONL"
        ) from None
    return ds.to_list()


def read_foreign(
    path: str | Path, forced: str | None = None, context: int | None = None, say: Say = print
):
    """A DatasetDict (train, test) of `messages`, `topic`, `template_id` from chat data in any
    shape of chat_rows.SHAPES. Its `source` attribute holds what config.json records about it."""
    import datasets

    from guppyforge.dataset.folder import fingerprint
    from guppyforge.dataset.split import prompt_key, split_by_prompt

    path = Path(path)
    files = data_files(path)
    max_chars = context * CHARS_PER_TOKEN if context else None
    rows: dict[str, list] = {"train": [], "test": []}
    bad: list[str] = []
    total, shape, mapping = 0, None, None
    for f in files:
        records = read_rows(f)
        if not records:
            continue
        columns = list(records[0])
        file_shape, file_map = recognise(columns, forced, f)
        if shape and file_shape != shape:
            raise GuppyError(
                f"{f}: holds {file_shape} rows, the files before it {shape}. Keep "
                "one shape per folder, or give one file"
            )
        shape, mapping = file_shape, file_map
        split = "test" if _TEST_NAME.search(f.stem.lower()) else "train"
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
