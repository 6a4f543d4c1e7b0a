"""A dataset folder: written safely, described by its card, read back.

Read in this order: the parquet writer and the all-or-nothing output folder; the figures that
describe a generated dataset and its card (README.md); reading the splits back, every row checked
at load.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import sys
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path

from guppyforge.dataset.split import prompt_key
from guppyforge.errors import GuppyError
from guppyforge.files import (
    MARKER,
    check_folder,
    guard,
    listing,
    read_marker,
    templates_dir,
    write_marker,
)
from guppyforge.version import __version__

# --- Writing a dataset folder safely: parquet files, and an all-or-nothing output directory.
#
# The folder is built under a temporary name next to its destination and renamed into place only
# once every file is written, so a crash, Ctrl-C or full disk never leaves a folder named like the
# destination that looks complete but is not.

# A row as the generator keeps it: cheap tuples rather than dicts, because 60K rows are built,
# hashed, split and converted, and every dict allocation shows up in the timing.
#   (messages as ((role, content), ...), topic, template_id, turns)
Row = tuple[tuple[tuple[str, str], ...], str, str, int]


def check_destination(out_dir: Path, force: bool, inputs=()) -> None:
    """Refuse, before any work starts, an output folder that exists (unless --force).

    Even with --force only a guppyforge dataset (its marker lists its files) or an empty folder
    is replaced, and only when it holds nothing else: `--out ~ --force` must not wipe a home.
    The rule is guppyforge.files's, shared by every command that writes.
    """
    check_folder(out_dir, "dataset", force, inputs=inputs, whole=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or an odd number): not ours to judge
    return True


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove `OUT.tmp-PID` folders a killed run left, if that PID is gone and the folder is ours
    (it holds our marker, written first, or nothing at all). Returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for path in out_dir.parent.glob(f"{glob.escape(out_dir.name)}.tmp-*"):
            pid = path.name.rpartition(".tmp-")[2]
            if not pid.isdigit() or _pid_alive(int(pid)) or not path.is_dir():
                continue
            marker = read_marker(path)
            if (marker and marker["kind"] == "dataset") or not any(path.iterdir()):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextmanager
def atomic_folder(out_dir: Path, force: bool, inputs=()) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes `out_dir`, on failure it vanishes.

    With `force`, an existing `out_dir` is moved aside only after the new folder is complete,
    then deleted, so at no moment does `out_dir` hold a half-written dataset.
    """
    check_destination(out_dir, force, inputs)
    out_dir = Path(out_dir).absolute()  # so that `--out .` still has a name to build on
    clean_leftovers(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier run that had our pid
    guard(out_dir, lambda: tmp.mkdir(parents=True))
    try:
        # The marker first: a folder left by a kill is then known to be ours, and cleaned.
        write_marker(tmp, "dataset", [])
        yield tmp
        written = [n for n in listing(tmp) if n != MARKER and not n.endswith("/")]
        write_marker(tmp, "dataset", written)  # by name: what a later --force may replace
        # Checked again: another process may have created the folder while we were working.
        check_destination(out_dir, force, inputs)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.replace(old, out_dir)  # put the previous dataset back as it was
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        # BaseException paths (KeyboardInterrupt) land here too: the partial folder goes.
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(rows: Sequence[Row], path: Path) -> int:
    """Write rows as a parquet file with the columns messages, topic, template_id, turns.

    Returns the in-memory Arrow size in bytes (what `datasets` reports as a split's num_bytes).
    pyarrow alone is used on purpose: importing `datasets` costs most of a second.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The nested `messages` column is built from flat columns: one list of roles, one of
    # contents, and the offsets where each row's messages start.
    offsets = [0]
    roles: list[str] = []
    contents: list[str] = []
    for messages, _topic, _template_id, _turns in rows:
        for role, content in messages:
            roles.append(role)
            contents.append(content)
        offsets.append(len(roles))
    message = pa.StructArray.from_arrays(
        [_strings(roles), _strings(contents)], names=["role", "content"]
    )
    table = pa.table(
        {
            "messages": pa.ListArray.from_arrays(_integers(offsets, pa.int32()), message),
            "topic": _strings([row[1] for row in rows]),
            "template_id": _strings([row[2] for row in rows]),
            "turns": _integers([row[3] for row in rows], pa.int64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.nbytes


# pa.array() would be the obvious way to make Arrow arrays from Python lists, but its first call
# imports pandas (about 0.25 s here) to check whether the input is a pandas object. Building the
# arrays from raw buffers skips that, and is faster on 100K strings too.


def _strings(items: list[str]):
    """An Arrow string array from Python strings, via one UTF-8 buffer and its offsets."""
    import pyarrow as pa

    encoded = [text.encode("utf-8") for text in items]
    offsets = array("q", [0])
    offsets.extend(accumulate(map(len, encoded)))
    # 64-bit offsets (large_string) cannot overflow while building; the cast back to the usual
    # 32-bit `string` only fails for a single column over 2 GiB.
    large = pa.Array.from_buffers(
        pa.large_string(),
        len(encoded),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )
    return large.cast(pa.string())


def _integers(items: list[int], kind):
    """An Arrow int32 or int64 array from Python ints."""
    import pyarrow as pa

    typecode = "q" if kind == pa.int64() else "i"
    return pa.Array.from_buffers(kind, len(items), [None, pa.py_buffer(array(typecode, items))])


# --- The figures that describe a generated dataset, and its dataset card (README.md).
#
# The same figures go to `stats.json` (for programs) and to the card (for people), so they are
# computed once here. None of them depends on timing or on the number of workers: the same persona
# and seed give the same stats.json, and a card that differs only in the command it quotes.

CARD_TEMPLATE = "dataset_card.md.j2"


def fingerprint(splits: dict[str, Sequence[Row]]) -> str:
    """A sha256 over the rows' content, split by split, independent of the parquet encoding.

    It is the hex digest of the compact JSON of `{split: [[messages, topic, template_id,
    turns], ...]}` (messages as `[[role, content], ...]`), so anyone can recompute it from the
    loaded dataset without guppyforge. One `json.dumps` call keeps it fast on 60K rows.
    """
    payload = json.dumps(
        {name: rows for name, rows in splits.items()}, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def pair_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Rows per (ask template, say template), turn by turn: `"food/ask0@L57/say2@L63": 130`.

    A pair far above its topic's others shows a reply the walk favours; one missing shows a
    question that no reply answers. Hand-written examples are not pairs and are left out.
    """
    counts: Counter[str] = Counter()
    for _messages, topic, template_id, _turns in rows:
        parts = template_id.split("/")
        if parts[0] == "examples" or len(parts) < 3:
            continue
        for i in range(1, len(parts) - 1, 2):
            counts[f"{topic}/{parts[i]}/{parts[i + 1]}"] += 1
    return dict(sorted(counts.items()))


def diversity(rows: Sequence[Row]) -> dict[str, float | int]:
    """Variety figures of the character's replies (and how many distinct prompts there are).

    distinct-n is the number of distinct word n-grams divided by the number of n-grams, over all
    replies: the usual measure of how repetitive a text collection is (1.0: nothing repeats).
    """
    prompts = set()
    replies: Counter[str] = Counter()
    for messages, _topic, _template_id, _turns in rows:
        prompts.add(prompt_key(messages))
        replies.update(content for role, content in messages if role == "assistant")

    # Each distinct reply is split once and weighted by how often it occurs: the n-gram sets
    # only need distinct texts, the totals need every occurrence.
    unigrams: set[str] = set()
    bigrams: set[tuple[str, str]] = set()
    n_words = n_pairs = 0
    for reply, count in replies.items():
        words = reply.lower().split()
        unigrams.update(words)
        bigrams.update(zip(words, words[1:], strict=False))
        n_words += count * len(words)
        n_pairs += count * max(len(words) - 1, 0)
    n_replies = replies.total()
    return {
        "distinct_prompts": len(prompts),
        "distinct_replies": len(replies),
        "distinct_1": round(len(unigrams) / n_words, 4) if n_words else 0.0,
        "distinct_2": round(len(bigrams) / n_pairs, 4) if n_pairs else 0.0,
        "mean_reply_words": round(n_words / n_replies, 2) if n_replies else 0.0,
    }


def topic_counts(
    splits: dict[str, Sequence[Row]], weights: dict[str, float]
) -> dict[str, dict[str, float | int]]:
    """Rows per topic, per split, with the topic's weight from the persona, in persona order.

    Rows whose topic the persona does not list (a hand-written example without one) still count.
    """
    per_split = {name: Counter(row[1] for row in rows) for name, rows in splits.items()}
    names = list(weights) + sorted(
        {t for counts in per_split.values() for t in counts} - set(weights)
    )
    table: dict[str, dict[str, float | int]] = {}
    for topic in names:
        entry: dict[str, float | int] = {
            "weight": weights.get(topic, 0),
            "rows": sum(counts.get(topic, 0) for counts in per_split.values()),
        }
        for split, counts in per_split.items():
            entry[split] = counts.get(topic, 0)
        table[topic] = entry
    return table


def size_category(n: int) -> str:
    """The Hugging Face `size_categories` bucket for a number of rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]
    for limit, label in bounds:
        if n < limit:
            return label
    return "10M<n<100M"


def _md_cell(text: object) -> str:
    # A table cell must stay on one line, and a '|' would end the cell early.
    return str(text).replace("\n", " ").replace("|", "\\|")


def render_card(stats: dict, persona, command: str, files: dict[str, dict[str, int]]) -> str:
    """Render README.md from templates/dataset_card.md.j2.

    `files` maps each split to `{"num_bytes": arrow size, "file_bytes": parquet size}`. The YAML
    header is what `datasets.load_dataset(folder)` and the Hub read: `configs` names the parquet
    files of each split, `dataset_info` their features and sizes.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly, not as blank text
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML; YAML values go through |tojson instead
    )
    env.filters["md_cell"] = _md_cell
    tags = list(dict.fromkeys(["guppyforge", "synthetic", "persona", *(persona.tags or [])]))
    return env.get_template(CARD_TEMPLATE).render(
        stats=stats,
        persona=persona,
        license=persona.license or "unknown",
        language=persona.language or "en",
        tags=tags,
        size_category=size_category(stats["rows"]),
        pretty_name=f"{persona.display_name}: a guppyforge persona dataset",
        files=files,
        command=command,
        version=__version__,
    )


# --- Reading a dataset folder back: the train and test splits that `generate` wrote.
#
# The folder is read with `datasets.load_dataset`, exactly as the same folder pushed to the Hub
# would be, so what `train` and `eval` see is what anyone else sees. Each parquet file's
# `messages` column is checked first, so a file from another tool is refused with its name and
# row rather than failing deep inside tokenizing.


def load_splits(
    data_dir: str | Path,
    fmt: str | None = None,
    context: int | None = None,
    say=lambda line: print(line, file=sys.stderr),
):
    """The `train` and `test` splits of a folder `generate` wrote, or of chat data in another
    shape (a file or folder: see formats.py; `fmt` forces its shape, `context` flags rows far
    too long for it, `say` gets the line saying what was recognised)."""
    import datasets  # heavy (pandas, fsspec...): only when a folder is actually read

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise GuppyError(
            f"{data_dir}: no such folder or file. Write a dataset with "
            "`guppyforge generate`, or give a file of chat data"
        )
    if fmt or not (data_dir.is_dir() and any(data_dir.glob("data/*.parquet"))):
        from guppyforge.dataset.formats import read_foreign

        return read_foreign(data_dir, fmt, context, say)
    for path in sorted(data_dir.glob("data/*.parquet")):
        check_messages(path)
    datasets.disable_progress_bars()  # training draws its own progress bar
    try:
        splits = datasets.load_dataset(str(data_dir))
    except Exception as e:  # datasets raises many types for a folder it cannot read
        _name_broken_file(data_dir)
        raise GuppyError(
            f"{data_dir}: not a dataset folder ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Write one with `guppyforge generate`."
        ) from None
    for name in ("train", "test"):
        if name not in splits:
            raise GuppyError(f"{data_dir}: no '{name}' split. Expected data/{name}-*.parquet.")
        if "messages" not in splits[name].column_names:
            raise GuppyError(
                f"{data_dir}: split '{name}' has no 'messages' column "
                "(a list of {role, content}). Write the data with `guppyforge generate`."
            )
    return splits


def _name_broken_file(data_dir: Path) -> None:
    """Raise a GuppyError naming the parquet file that cannot be read, if one is to blame."""
    import pyarrow.parquet as pq

    for path in sorted(data_dir.glob("data/*.parquet")):
        try:
            pq.read_table(path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise GuppyError(
                f"{path}: damaged parquet file ({why}). Generate the dataset again, "
                "or restore the file"
            ) from None


FIX = "Write the data with `guppyforge generate`, or mend that row"


def check_messages(path: Path) -> None:
    """Refuse a parquet file whose `messages` are not lists of {role, content} strings, naming
    the first row at fault (counting from 0)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():  # a FIFO or a device would block the read for ever
        raise GuppyError(f"{path}: not a regular file. Give the parquet file itself")
    try:
        schema = pq.read_schema(path)
    except Exception:  # damaged: _name_broken_file says so once datasets fails on it
        return
    if "messages" not in schema.names:
        columns = ", ".join(schema.names[:5]) or "none"
        raise GuppyError(
            f"{path}: no 'messages' column (it has: {columns}). Name the column "
            "of conversations 'messages', or write the data with `guppyforge "
            "generate`"
        )
    kind = schema.field("messages").type
    item = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
    texts = (pa.types.is_string(t) or pa.types.is_large_string(t) for t in _fields(item))
    if item is None or not pa.types.is_struct(item) or not all(texts):
        raise GuppyError(
            f"{path}: the 'messages' column holds {kind}, not lists of "
            "{role, content} strings. Write the data with `guppyforge generate`"
        )
    column = pq.read_table(path, columns=["messages"]).column("messages").combine_chunks()
    row = _first(column.is_null())
    if row is not None:
        raise GuppyError(f"{path}: row {row}: 'messages' is null. {FIX}")
    row = _first(pc.equal(pc.list_value_length(column), 0))
    if row is not None:
        raise GuppyError(f"{path}: row {row}: 'messages' is an empty list. {FIX}")
    flat, parents = pc.list_flatten(column), pc.list_parent_indices(column)
    for name in ("role", "content"):
        at = _first(pc.or_(flat.is_null(), pc.struct_field(flat, name).is_null()))
        if at is not None:
            row = parents[at].as_py()
            raise GuppyError(f"{path}: row {row}: a message with no '{name}'. {FIX}")


def _fields(struct) -> list:
    """The role and content field types of a message struct ([None] if either is missing)."""
    import pyarrow as pa

    if struct is None or not pa.types.is_struct(struct):
        return [None]
    names = [struct.field(i).name for i in range(struct.num_fields)]
    return [struct.field(n).type if n in names else None for n in ("role", "content")]


def _first(mask) -> int | None:
    """Index of the first true value of a boolean array (nulls count as false), or None."""
    import pyarrow.compute as pc

    hits = pc.indices_nonzero(pc.fill_null(mask, False))
    return hits[0].as_py() if len(hits) else None
