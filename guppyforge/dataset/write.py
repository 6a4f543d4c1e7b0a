"""Writing a dataset folder safely: parquet files, and an all-or-nothing output directory.

The folder is built under a temporary name next to its destination and renamed into place only
once every file is written, so a crash, Ctrl-C or full disk never leaves a folder named like the
destination that looks complete but is not.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path

from guppyforge.ownership import MARKER, check_folder, guard, listing, read_marker, write_marker

# A row as the generator keeps it: cheap tuples rather than dicts, because 60K rows are built,
# hashed, split and converted, and every dict allocation shows up in the timing.
#   (messages as ((role, content), ...), topic, template_id, turns)
Row = tuple[tuple[tuple[str, str], ...], str, str, int]


def check_destination(out_dir: Path, force: bool, inputs=()) -> None:
    """Refuse, before any work starts, an output folder that exists (unless --force).

    Even with --force only a guppyforge dataset (its marker lists its files) or an empty folder
    is replaced, and only when it holds nothing else: `--out ~ --force` must not wipe a home.
    The rule is guppyforge.ownership's, shared by every command that writes.
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
