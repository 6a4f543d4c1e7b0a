"""Reading a dataset folder back: the train and test splits that `generate` wrote.

The folder is read with `datasets.load_dataset`, exactly as the same folder pushed to the Hub
would be, so what `train` and `eval` see is what anyone else sees. Each parquet file's
`messages` column is checked first, so a file from another tool is refused with its name and
row rather than failing deep inside tokenizing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from guppyforge.errors import GuppyError


def load_splits(data_dir: str | Path, fmt: str | None = None, context: int | None = None,
                say=lambda line: print(line, file=sys.stderr)):  # fmt: skip
    """The `train` and `test` splits of a folder `generate` wrote, or of chat data in another
    shape (a file or folder: see formats.py; `fmt` forces its shape, `context` flags rows far
    too long for it, `say` gets the line saying what was recognised)."""
    import datasets  # heavy (pandas, fsspec...): only when a folder is actually read

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise GuppyError(f"{data_dir}: no such folder or file. Write a dataset with "
                         "`guppyforge generate`, or give a file of chat data")  # fmt: skip
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
            raise GuppyError(f"{path}: damaged parquet file ({why}). Generate the dataset again, "
                             "or restore the file") from None  # fmt: skip


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
        raise GuppyError(f"{path}: no 'messages' column (it has: {columns}). Name the column "
                         "of conversations 'messages', or write the data with `guppyforge "
                         "generate`")  # fmt: skip
    kind = schema.field("messages").type
    item = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
    texts = (pa.types.is_string(t) or pa.types.is_large_string(t) for t in _fields(item))
    if item is None or not pa.types.is_struct(item) or not all(texts):
        raise GuppyError(f"{path}: the 'messages' column holds {kind}, not lists of "
                         "{role, content} strings. Write the data with `guppyforge generate`")  # fmt: skip
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
