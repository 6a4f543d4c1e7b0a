"""What guppyforge owns on disk, and so what `--force` may replace: one rule for every command.

Every output folder gets a marker, `.guppyforge.json`: the kind of folder (dataset, run,
export) and the files guppyforge writes there. With it the rule is simple:

- without `--force`, nothing that exists is replaced: the folder must be new or empty;
- with `--force`, only the files the marker lists are replaced, and a folder holding anything
  else is refused with a line naming a few of those files. A folder that a command swaps as a
  whole (a dataset) must hold nothing else at all; a folder a command writes into (a run, an
  export) keeps the user's other files untouched but refuses any that would be overwritten;
- `--out` equal to an input, inside one, or holding one is refused.

Single files (a card, a persona, `eval --json`) carry no marker: with `--force` a file is
replaced only when its content (or, for personas, its YAML name) shows it is of the kind the
command writes. Folders written before markers existed are recognised by their usual files.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.files import write_atomic

MARKER = ".guppyforge.json"
MAX_LISTED = 3  # foreign files named in a refusal
MAX_SCAN = 10_000  # entries looked at in a folder: `--out ~` must not walk a whole disk

# The files each kind of folder holds; `*` patterns match one path segment. A run's and an
# export's temporary files (`.name.XXXX.tmp`, left by a kill) are theirs too.
KIND_FILES: dict[str, tuple[str, ...]] = {
    "dataset": ("data/*.parquet", "README.md", "stats.json", "persona.yaml"),
    "run": (
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "persona.yaml", "metrics.jsonl", "loss.png", "README.md", "checkpoints/last.pt",
    ),
    "export": (),  # each target names its own files
}  # fmt: skip
NOUNS = {"dataset": "dataset", "run": "run folder", "export": "export"}
# Folders written before markers existed: the files that must all be there to count as ours.
_LEGACY = {
    "dataset": (("stats.json", "persona.yaml", "data"),),
    "run": (("checkpoints/last.pt",), ("config.json", "model.safetensors")),
    "export": (("model.safetensors",), ("model.onnx",), ("model.int8.onnx",)),
}


@dataclass
class Claim:
    """An output folder this command may write: what it held of ours before, and its marker."""

    path: Path
    kind: str
    files: tuple[str, ...]
    ours: list[str]  # files of an earlier output, relative to `path`

    def clear(self) -> None:
        """Remove the earlier output's files (after --force), so none is left stale."""
        for name in self.ours:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (self.path / name).unlink()

    def take(self) -> Claim:
        """Create the folder and mark it ours; drop the temp files a killed run left in it."""
        guard(self.path, lambda: self.path.mkdir(parents=True, exist_ok=True))
        write_marker(self.path, self.kind, self.files)
        for name in self.ours:
            if name.rpartition("/")[2].startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()
        return self


def write_marker(folder: Path, kind: str, files: Iterable[str]) -> None:
    """Record in `folder` that guppyforge wrote it, and which files are its own."""
    text = json.dumps({"guppyforge": kind, "files": sorted(set(files))}, indent=2) + "\n"
    guard(folder / MARKER, lambda: write_atomic(folder / MARKER, text))


def guard(path: Path, action: Callable):
    """Run `action`; a file-system refusal (read-only, full, not a folder) becomes one line."""
    try:
        return action()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise GuppyError(f"{path}: cannot write ({why}). Pick another --out, or fix the "
                         "folder's permissions") from None  # fmt: skip


def check_inputs(out: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one."""
    mine = out.resolve()
    for given in inputs:
        other = Path(given).resolve()
        if mine == other or other in mine.parents:
            raise GuppyError(f"--out {out}: that is (inside) the input {given}, which would be "
                             "overwritten. Pick a folder of its own for --out")  # fmt: skip
        if mine in other.parents:
            raise GuppyError(f"--out {out}: holds the input {given}, which --force could "
                             "replace. Pick a folder of its own for --out")  # fmt: skip


def read_marker(folder: Path) -> dict | None:
    """The marker of `folder`, or None when it has none (or one that is not ours)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return {"kind": str(data.get("guppyforge")), "files": files}


def listing(folder: Path) -> list[str]:
    """Files (and empty folders) under `folder`, as relative POSIX paths; at most MAX_SCAN."""
    out: list[str] = []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if not dirs and not names and rel != Path("."):
            out.append(rel.as_posix() + "/")
        for name in names:
            out.append((rel / name).as_posix().removeprefix("./"))
        if len(out) > MAX_SCAN:
            break
    return sorted(out)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Does `name` match a pattern (or is it an atomic write's leftover of one that does)?"""
    head, _, base = name.rpartition("/")
    if base.startswith(".") and base.endswith(".tmp"):  # `.model.safetensors.k3j9.tmp`
        name = f"{head}/{base[1:].rsplit('.', 2)[0]}".lstrip("/")
    return name == MARKER or any(
        fnmatch.fnmatchcase(name, p) and name.count("/") == p.count("/") for p in patterns
    )


def _owned(folder: Path, kind: str, files: Sequence[str]) -> tuple[list[str], list[str], str]:
    """(ours, foreign, the kind the folder is) for an existing folder."""
    present = listing(folder)
    marker = read_marker(folder)
    if marker is not None:
        patterns, found = marker["files"], marker["kind"]
    else:
        legacy = any(all((folder / f).exists() for f in need) for need in _LEGACY.get(kind, ()))
        patterns, found = (tuple(files) + KIND_FILES.get(kind, ()), kind) if legacy else ((), "")
        if legacy and kind == "export" and not (folder / "model.safetensors").exists():
            patterns = [p for p in patterns if p not in ("README.md", "config.json")]
    ours = [n for n in present if matches(n, patterns) and n != MARKER]
    foreign = [n for n in present if n not in ours and n != MARKER and not n.endswith("/")]
    foreign += [n for n in present if n.endswith("/") and not any(p.startswith(n) for p in ours)]
    return ours, sorted(foreign), found


def kind_of(folder: str | Path, kind: str) -> str:
    """The kind of guppyforge folder `folder` is ('' if none), judged as a `kind` would be."""
    if not Path(folder).is_dir():
        return ""
    ours, _, found = _owned(Path(folder), kind, KIND_FILES.get(kind, ()))
    return found if ours else ""  # a marker alone (a run that failed at once) holds nothing


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def check_folder(
    out: str | Path,
    kind: str,
    force: bool,
    *,
    inputs: Sequence[str | Path] = (),
    files: Sequence[str] = (),
    whole: bool = False,
    reuse: bool = False,
) -> Claim:
    """Decide, before any work, whether `out` may be written as a `kind` folder; write nothing.

    `files`: the patterns this command writes (default: the kind's usual files). `whole`: the
    command replaces the folder as a whole, so any foreign file is refused. `reuse`: an earlier
    output of this kind is continued, not replaced (`train --resume`).
    """
    out = Path(out)
    files = tuple(files) or KIND_FILES[kind]
    check_inputs(out, inputs)
    noun = NOUNS.get(kind, kind)
    if not out.exists():
        if out.is_symlink() or any(p.is_file() for p in out.parents):
            raise GuppyError(f"--out {out}: a file (or broken link) is in the way. Pick --out")
        return Claim(out, kind, files, [])
    if not out.is_dir():
        raise GuppyError(f"--out {out}: exists and is not a folder. Remove it, or pick --out")
    ours, foreign, found = _owned(out, kind, files)
    if not foreign and not ours:
        return Claim(out, kind, files, [])  # an empty folder (or only an empty marker)
    if found and found != kind:
        raise GuppyError(f"--out {out}: holds a guppyforge {NOUNS.get(found, found)}, not a "
                         f"{noun}. Pick another --out")  # fmt: skip
    if not force and not (reuse and found):
        if not found:
            raise GuppyError(f"{out}: already exists and is not a guppyforge {noun} (it holds "
                             f"{_few(foreign)}). Pick another --out")  # fmt: skip
        raise GuppyError(f"{out}: already exists. Use --force to replace it, or pick --out.")
    in_the_way = foreign if whole else [n for n in foreign if matches(n, files)]
    if in_the_way:
        would = "delete" if whole else "overwrite"
        raise GuppyError(f"{out}: not a guppyforge {noun}: it holds files guppyforge did not "
                         f"write ({_few(in_the_way)}), so --force will not {would} them. Move "
                         "them away, or pick another --out")  # fmt: skip
    return Claim(out, kind, files, ours)


def claim(
    out: str | Path,
    kind: str,
    force: bool,
    *,
    inputs: Sequence[str | Path] = (),
    files: Sequence[str] = (),
    reuse: bool = False,
) -> Claim:
    """check_folder, then create `out` and mark it ours; an earlier output's files stay until
    `Claim.clear()` (after --force) removes them."""
    return check_folder(out, kind, force, inputs=inputs, files=files, reuse=reuse).take()


# --- single files -------------------------------------------------------------------------


def _json_object(path: Path, limit: int = 64 << 20) -> dict:
    try:
        if path.stat().st_size > limit:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_card(path: Path) -> bool:
    data = _json_object(path).get("data")
    ext = data.get("extensions") if isinstance(data, dict) else None
    return isinstance(ext, dict) and "guppyforge" in ext


# What `--force` may replace for each kind of single file, and how it is told apart.
FILE_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "card": ("a card guppyforge exported", _is_card),
    "persona": ("a YAML file", lambda p: p.suffix.lower() in (".yaml", ".yml")),
    "eval": ("an eval result", lambda p: {"run", "probe_pass_rate"} <= _json_object(p).keys()),
}


def claim_file(
    path: str | Path,
    kind: str,
    force: bool,
    *,
    inputs: Sequence[str | Path] = (),
    hint: str = "Use --force to replace it, or pick --out",
) -> Path:
    """Check that `path` may be written as a `kind` file (see FILE_KINDS); write nothing."""
    path = Path(path)
    what, recognise = FILE_KINDS[kind]
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise GuppyError(f"{path}: that is the input file itself. Pick another --out")
    if path.is_dir():
        raise GuppyError(f"{path}: is a folder. Give a file name, e.g. {path / 'out.json'}")
    if any(p.is_file() for p in path.parents):
        raise GuppyError(f"{path}: a file is in the way of that path. Pick another --out")
    if path.exists() or path.is_symlink():
        if not force:
            raise GuppyError(f"{path}: already exists. {hint}")
        if not recognise(path):
            raise GuppyError(f"{path}: not {what}, so --force will not replace it. Move it "
                             "away, or pick another --out")  # fmt: skip
    return path
