"""Reading a dataset folder back: the train and test splits that `generate` wrote.

The folder is read with `datasets.load_dataset`, exactly as the same folder pushed to the Hub
would be, so what `train` and `eval` see is what anyone else sees.
"""

from __future__ import annotations

from pathlib import Path

from guppyforge.errors import GuppyError


def load_splits(data_dir: str | Path):
    """The `train` and `test` splits of a folder `datasets.load_dataset` reads (parquet)."""
    import datasets  # heavy (pandas, fsspec...): only when a folder is actually read

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GuppyError(f"{data_dir}: no such folder. Write one with `guppyforge generate`.")
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
