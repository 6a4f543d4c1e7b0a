"""How guppyforge touches the disk: files written whole or not at all, the package's own folders,
and what it owns, so what `--force` may replace.

Read in this order: whole-file writes and the refusal of inputs that are not plain files (and the
text tables commands print); the built-in personas and templates, found through
importlib.resources; the ownership rule every command that writes follows.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path, PurePosixPath

from guppyforge.errors import GuppyError

# --- Writing files whole or not at all, refusing inputs that are not files, and the text tables
#
# commands print.
#
# Every file guppyforge writes goes through `atomic_path`: a temp file in the same folder (so the
# same file system), then one `os.replace`. Readers see the old file or the new one, never half of
# one, and a crash or Ctrl-C leaves no partial file under the real name.


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write; on success it replaces `path` in one step, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; what we write is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as they are) to `path` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def require_regular(path: str | Path, fix: str = "Give the file itself") -> None:
    """Refuse a FIFO, device or socket as an input before opening it: reading one may never end.

    A missing file passes: the open that follows says so in its own words.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise GuppyError(f"{path}: {kind}, not a regular file. {fix}")


# Control characters (bar newline and tab) and the bidirectional overrides: a persona or a model
# can hold them, and a terminal would obey them (clear the screen, retitle the window, hide text).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text safe to print to a terminal: control characters shown as escapes, e.g. `\\x1b`."""
    return _CONTROL.sub(lambda m: ascii(m[0])[1:-1], text)


def columns(text: str) -> int:
    """Terminal columns: CJK characters take two, so Japanese names still line up."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def cut(text: str, width: int) -> str:
    """`text` on one line, at most `width` characters: a table cell or a quoted reply."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def text_table(rows: Sequence[Sequence[object]], indent: str = "", align: str = "") -> str:
    """Rows (the header first) as padded columns. `align` has an l or r per column; by default
    the first column is left-aligned (names) and the rest right-aligned (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(columns(row[i]) for row in cells) for i in range(len(cells[0]))]
    align = align or "l" + "r" * (len(widths) - 1)
    lines = []
    for row in cells:
        padded = [
            c + " " * (w - columns(c)) if a == "l" else " " * (w - columns(c)) + c
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        lines.append((indent + "  ".join(padded)).rstrip())
    return "\n".join(lines)


# --- The folders that ship inside the package: the built-in personas and the templates.
#
# In the repository they sit at the top level (`personas/`, `templates/`), where people look for
# them; pyproject.toml maps them into the package as `guppyforge.personas` and
# `guppyforge.templates`, so a wheel carries them. Code reaches them only through
# importlib.resources, which finds them the same way in a wheel and in an editable install.


def personas_dir() -> Path:
    """The built-in personas' folder."""
    return Path(str(files("guppyforge.personas")))


def templates_dir() -> Path:
    """The Jinja2 templates' folder (cards, the starter persona)."""
    return Path(str(files("guppyforge.templates")))


def builtin_persona(name: str) -> Path | None:
    """A built-in persona by name (`guppy`), or None."""
    path = personas_dir() / f"{name}.yaml"
    return path if path.is_file() else None


def builtin_personas() -> list[Path]:
    """Every built-in persona file, sorted by name."""
    return sorted(personas_dir().glob("*.yaml"))


# --- What guppyforge owns on disk, and so what `--force` may replace: one rule for every command.
#
# Only a marker proves ownership, never what a file or folder looks like:
#
# - a folder guppyforge writes (dataset, run, export) holds `.guppyforge.json`: the kind of
#   folder and the files guppyforge wrote there, by name. A folder without one is not
#   guppyforge's: unless it is empty it is refused, with or without `--force`;
# - with the marker, `--force` replaces exactly the files it lists and never touches another
#   one; a file of the user's in the way of what the command writes is refused, never replaced.
#   Without `--force` an earlier output is never replaced;
# - a single file carries guppyforge's signature inside instead (a card's
#   `extensions.guppyforge`, a persona's `guppyforge:` key with the name being written, an eval
#   result's `schema`); a file without it is refused even with `--force`;
# - `--out` equal to an input, inside one, or holding one is refused.
#
# A refusal never suggests `--force` where `--force` would be refused too. Exports are written
# into a staging folder inside `--out` first, so a full disk or a crash leaves the old files.

MARKER = ".guppyforge.json"
EVAL_SCHEMA = "guppyforge.eval/1"  # the `schema` of an `eval --json` result
MAX_LISTED = 3  # foreign files named in a refusal
MAX_SCAN = 10_000  # entries looked at in a folder: `--out ~` must not walk a whole disk

# The files each kind of folder holds, as patterns (`*` matches within one path segment): what a
# command may write, checked against the user's files before any work. What is *ours* is only
# ever what a marker lists.
KIND_FILES: dict[str, tuple[str, ...]] = {
    "dataset": ("data/*.parquet", "README.md", "stats.json", "persona.yaml"),
    "run": (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "persona.yaml",
        "metrics.jsonl",
        "loss.png",
        "README.md",
        "checkpoints/last.pt",
    ),
    "export": (),  # each target names its own files
}
NOUNS = {"dataset": "dataset", "run": "run folder", "export": "export"}
# Markers written before they listed files by name held these patterns: still guppyforge's word.
_OLD_PATTERNS = {"data/*.parquet", "character/*", "character/onnx/*", "runtime/*"}
# What an atomic write leaves when killed (files.atomic_path, gguf): `.NAME.RANDOM.tmp`.
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp")
_STAGING = ".guppyforge.tmp-"  # + pid: where an export is written before it is moved in


def _safe_name(name: object) -> bool:
    """A path a marker may list: relative, inside the folder, not the marker itself."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and path.as_posix() == name != MARKER


def read_marker(folder: Path) -> dict | None:
    """The marker of `folder` ({kind, files}), or None when it has none (or one that is not ours).

    Listed names that would lead outside the folder are dropped: a marker in a folder from a
    stranger must not point `--force` at the user's other files.
    """
    path = Path(folder) / MARKER
    try:
        if not path.is_file() or path.stat().st_size > 4 << 20:  # a FIFO would block the read
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("guppyforge"), str):
        return None
    files = data.get("files")
    if not isinstance(files, list):
        return None
    return {"kind": data["guppyforge"], "files": [f for f in files if _safe_name(f)]}


def write_marker(folder: Path, kind: str, files: Iterable[str]) -> None:
    """Record in `folder` that guppyforge wrote it, and which files (by name) are its own."""
    text = json.dumps({"guppyforge": kind, "files": sorted(set(files))}, indent=2) + "\n"
    guard(folder / MARKER, lambda: write_atomic(folder / MARKER, text))


def guard(path: Path, action: Callable):
    """Run `action`; a file-system refusal (read-only, full, not a folder) becomes one line."""
    try:
        return action()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise GuppyError(
            f"{path}: cannot write ({why}). Pick another --out, or fix the folder's permissions"
        ) from None


def check_inputs(out: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one."""
    mine = out.resolve()
    for given in inputs:
        other = Path(given).resolve()
        if mine == other or other in mine.parents:
            raise GuppyError(
                f"--out {out}: that is (inside) the input {given}, which would be "
                "overwritten. Pick a folder of its own for --out"
            )
        if mine in other.parents:
            raise GuppyError(
                f"--out {out}: holds the input {given}, which --force could "
                "replace. Pick a folder of its own for --out"
            )


def listing(folder: Path) -> list[str]:
    """Files, links and empty folders under `folder`, as relative POSIX paths; at most MAX_SCAN."""
    out: list[str] = []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if not dirs and not names and rel != Path("."):
            out.append(rel.as_posix() + "/")
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # not walked: listed
        for name in names + links:
            out.append((rel / name).as_posix().removeprefix("./"))
        if len(out) > MAX_SCAN:
            break
    return sorted(out)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Does `name` match one of `patterns` (`*` within one path segment)?"""
    return any(fnmatch.fnmatchcase(name, p) and name.count("/") == p.count("/") for p in patterns)


def _listed(name: str, files: set[str]) -> bool:
    """Is `name` a file the marker lists, or what a killed atomic write of one left?"""
    if name in files or matches(name, _OLD_PATTERNS & files):
        return True
    head, _, base = name.rpartition("/")
    temp = _TEMP.fullmatch(base)
    return bool(temp) and (
        temp["name"] == MARKER or _listed(f"{head}/{temp['name']}".lstrip("/"), files)
    )


def _staging(folder: Path, name: str) -> bool:
    """Is `name` (a top-level entry) an export's staging folder, marked as such?"""
    top = name.partition("/")[0]
    if not top.startswith(_STAGING):
        return False
    marker = read_marker(folder / top)
    return marker is not None and marker["kind"] == "staging"


def _owned(folder: Path) -> tuple[list[str], list[str], dict | None]:
    """(ours, foreign, marker) for an existing folder: ours is only what the marker lists."""
    present = [n for n in listing(folder) if n not in (MARKER, LOCK)]
    marker = read_marker(folder)
    files = set(marker["files"]) if marker else set()
    ours = [
        n for n in present if _staging(folder, n) or (not n.endswith("/") and _listed(n, files))
    ]
    parents = {str(PurePosixPath(f).parent) + "/" for f in ours + list(files)}
    foreign = [n for n in present if n not in ours and n not in parents]
    if (folder / MARKER).exists() and marker is None:
        foreign.append(MARKER)  # a broken marker proves nothing
    return ours, sorted(foreign), marker


def kind_of(folder: str | Path, kind: str = "") -> str:
    """The kind of guppyforge folder `folder` is by its marker ('' if none, or if it holds
    nothing of ours yet: a run that failed at once)."""
    if not Path(folder).is_dir():
        return ""
    ours, _, marker = _owned(Path(folder))
    return marker["kind"] if marker and ours else ""


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _in_the_way(out: Path, names: list[str], noun: str, would: str) -> GuppyError:
    return GuppyError(
        f"{out}: holds files guppyforge did not write ({_few(names)}) that this "
        f"{noun} would {would}, and --force never replaces them. Move them out "
        "of it, or choose a new --out"
    )


@dataclass
class Claim:
    """An output folder this command may write: what it held of ours before, and its marker."""

    path: Path
    kind: str
    files: tuple[str, ...]  # patterns of what this command writes
    ours: list[str] = field(default_factory=list)  # an earlier output's files, relative to path

    def clear(self) -> None:
        """Remove the earlier output's files (after --force): exactly those its marker listed."""
        for name in self.ours:
            target = self.path / name
            if _staging(self.path, name):
                shutil.rmtree(self.path / name.partition("/")[0], ignore_errors=True)
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                target.unlink()

    def take(self) -> Claim:
        """Create the folder and mark it ours; drop the temp files a killed run left in it."""
        guard(self.path, lambda: self.path.mkdir(parents=True, exist_ok=True))
        kept = [n for n in self.ours if (self.path / n).exists() and not _staging(self.path, n)]
        temps = [n for n in kept if _TEMP.fullmatch(n.rpartition("/")[2])]
        exact = [f for f in self.files if "*" not in f]
        write_marker(self.path, self.kind, exact + [n for n in kept if n not in temps])
        for name in temps:
            with contextlib.suppress(OSError):
                (self.path / name).unlink()
        return self

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """A folder to write the new output into; on success its files replace the earlier
        output's (see `_commit`), on any failure it vanishes and `path` is as it was."""
        existed = self.path.exists()
        guard(self.path, lambda: self.path.mkdir(parents=True, exist_ok=True))
        stage = Path(guard(self.path, lambda: tempfile.mkdtemp(prefix=_STAGING, dir=self.path)))
        done = False
        try:
            write_marker(stage, "staging", [])  # so a kill's leftover is known to be ours
            try:
                yield stage
            except Exception as exc:
                why = _write_failure(exc)
                if why is None:
                    raise
                raise GuppyError(
                    f"{self.path}: cannot write ({why}); nothing was changed. Free "
                    "some space, or pick another --out"
                ) from None
            guard(self.path, lambda: self._commit(stage))
            done = True
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            if not done and not existed:
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def _commit(self, stage: Path) -> None:
        """Move the staged files into place: the earlier output's files go, no other file."""
        new = [n for n in listing(stage) if n != MARKER and not n.endswith("/")]
        ours = set(self.ours)
        clash = [n for n in new if n not in ours and self._blocked(n)]
        if clash:  # made while we worked, or a folder or link in the way
            raise _in_the_way(self.path, clash, NOUNS[self.kind], "overwrite")
        # Listed before they move in: a kill from here on leaves only files the marker names.
        earlier = [n for n in self.ours if not _staging(self.path, n)]
        write_marker(self.path, self.kind, earlier + new)
        Claim(self.path, self.kind, self.files, [n for n in self.ours if n not in new]).clear()
        for name in new:
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, self.path / name)
        write_marker(self.path, self.kind, new)

    def _blocked(self, name: str) -> bool:
        target = self.path / name
        parents = [p for p in target.parents if self.path in p.parents]
        return (
            target.exists()
            or target.is_symlink()
            or any(p.is_symlink() or (p.exists() and not p.is_dir()) for p in parents)
        )


def _write_failure(exc: Exception) -> str | None:
    """Why writing failed, when the disk is to blame (a full disk, a read-only one), else None.

    Writers wrap the OSError in their own types (safetensors' SafetensorError, for one), so the
    message is looked at too.
    """
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    text = str(exc)
    for why in ("No space left on device", "Disk quota exceeded", "Read-only file system"):
        if why in text:
            return why
    return None


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
    command replaces the folder as a whole, so any file the marker does not list is refused.
    `reuse`: an earlier output of this kind is continued, not replaced (`train --resume`).
    """
    out = Path(out)
    files = tuple(files) or KIND_FILES[kind]
    check_inputs(out, inputs)
    noun = NOUNS.get(kind, kind)
    if not out.exists():
        if out.is_symlink() or any(p.is_file() for p in out.parents):
            raise GuppyError(f"--out {out}: a file (or broken link) is in the way. Pick --out")
        return Claim(out, kind, files)
    if not out.is_dir():
        raise GuppyError(f"--out {out}: exists and is not a folder. Move it away, or pick --out")
    ours, foreign, marker = _owned(out)
    if marker is None:
        if not foreign:
            return Claim(out, kind, files, ours)  # empty, or only a killed export's staging
        raise GuppyError(
            f"{out}: already exists and has no {MARKER}, so none of its files "
            f"({_few(foreign)}) are guppyforge's to replace, even with --force. "
            "Choose a new --out, or move the folder away"
        )
    if marker["kind"] != kind and (ours or marker["kind"] != "staging"):
        found = NOUNS.get(marker["kind"], marker["kind"])
        raise GuppyError(
            f"--out {out}: holds a guppyforge {found}, not a {noun}. Choose a new --out"
        )
    in_the_way = foreign if whole else [n for n in foreign if matches(n.rstrip("/"), files)]
    if in_the_way:
        raise _in_the_way(out, in_the_way, noun, "delete" if whole else "overwrite")
    if ours and not force and not reuse:
        raise GuppyError(
            f"{out}: already holds a guppyforge {noun}. Add --force to replace "
            "the files it wrote (and no other), or choose a new --out"
        )
    return Claim(out, kind, files, ours)


# --- One writer per folder: a lock file that names its holder ---------------------------------
#
# `train` holds it on its run folder from the moment the folder is claimed to the last file, so
# a second `train --resume` (or `--force`) of the same run is refused instead of writing beside
# the first. The file holds the holder's pid and host; one whose process is gone (a kill -9, a
# crash) is stale and taken over. It is removed on release, so a finished folder holds none.

LOCK = ".guppyforge.lock"


def _lock_holder(path: Path) -> dict | None:
    """Who holds the lock at `path` ({pid, host}), or None when nobody does (absent or stale)."""
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(held["pid"]), str(held["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {"pid": "?", "host": "?"}  # not ours to judge: a half-written or foreign file
    if host != os.uname().nodename:
        return held  # another machine's process (a shared disk): this one cannot see it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # its process is gone: stale
    except PermissionError:
        pass  # alive, another user's
    return held if pid != os.getpid() else None


class FolderLock:
    """The lock of `folder`: `hold()` takes it (or refuses, naming the holder), `release()`
    gives it back; `check()` only refuses. Idempotent, so a caller may hold it early."""

    def __init__(self, folder: str | Path, what: str = "run"):
        self.path, self.what, self.held = Path(folder) / LOCK, what, False

    def check(self) -> None:
        holder = _lock_holder(self.path)
        if holder is not None and not self.held:
            raise GuppyError(
                f"{self.path.parent}: another guppyforge process (pid {holder['pid']} on "
                f"{holder['host']}) is writing this {self.what}. Wait for it to end or stop it; "
                f"if it is gone, delete {self.path}"
            )

    def hold(self) -> FolderLock:
        if self.held:
            return self
        text = json.dumps({"pid": os.getpid(), "host": os.uname().nodename}) + "\n"

        def create() -> int | None:  # O_EXCL: of two processes taking a free lock, one wins
            try:
                return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None

        for _ in range(2):  # a stale lock is removed once, then taken like a free one
            self.check()
            fd = guard(self.path, create)
            if fd is None:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            self.held = True
            return self
        self.check()  # taken again meanwhile: name the new holder
        raise GuppyError(f"{self.path}: cannot take the lock. Try again")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# --- single files -------------------------------------------------------------------------


def json_object(path: Path, limit: int = 64 << 20) -> dict:
    """The JSON object in `path`, or {} for anything else (too big, unreadable, not an object)."""
    try:
        if path.stat().st_size > limit:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class FileKind:
    """A kind of single file guppyforge writes: what it is, in words, and how one is known by
    the signature guppyforge writes into it. The layer that writes the file defines it
    (persona/yamlsafe.py: a persona; cards/png.py: a card), so this module imports none."""

    what: str
    is_ours: Callable[[Path], bool]


EVAL_RESULT = FileKind(
    f'an eval result ("schema": "{EVAL_SCHEMA}")',
    lambda p: json_object(p).get("schema") == EVAL_SCHEMA,
)


def claim_file(
    path: str | Path,
    kind: FileKind,
    force: bool,
    *,
    inputs: Sequence[str | Path] = (),
    hint: str = "Add --force to replace it, or pick another --out",
    elsewhere: str = "Pick another --out, or move the file away",
) -> Path:
    """Check that `path` may be written as a `kind` file; write nothing. `hint` follows
    "already exists" for a file that is ours; `elsewhere`, for one that is not."""
    path = Path(path)
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise GuppyError(f"{path}: that is the input file itself. Pick another --out")
    if path.is_dir():
        raise GuppyError(f"{path}: is a folder. Give a file name, e.g. {path / 'out.json'}")
    if any(p.is_file() for p in path.parents):
        raise GuppyError(f"{path}: a file is in the way of that path. Pick another --out")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file() or not kind.is_ours(path):
            raise GuppyError(
                f"{path}: already exists and is not {kind.what}, so guppyforge never "
                f"replaces it, not even with --force. {elsewhere}"
            )
        if not force:
            raise GuppyError(f"{path}: already exists. {hint}")
    return path
