"""Read a YAML file written by a stranger: plain data only, bounded cost, a line:column for every key.

Two passes over the text. The first streams parser events (no recursion, no tree) to enforce the
limits: depth, alias uses, nodes after alias expansion (the "billion laughs" bomb) and tags. Only
then is the node tree composed and turned into Python data, recording where each value came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guppyforge.errors import GuppyError, where
from guppyforge.files import FileKind, require_regular
from guppyforge.persona import bounds

try:  # libyaml is ~10x faster; both keep line/column marks
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_STD = "tag:yaml.org,2002:"
_TYPED = {_STD + t for t in ("int", "float", "bool", "null")}
_ALLOWED_TAGS = {None, "!", _STD + "str", _STD + "map", _STD + "seq"} | _TYPED

Path_ = tuple  # a key path such as ("topics", "food", "ask", 2)


@dataclass
class Doc:
    """A parsed YAML file: its data, plus where every value (and mapping key) came from."""

    path: Path
    data: Any
    sha256: str
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # value -> (line, col)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # key -> (line, col)
    texts: dict[Path_, str] = field(default_factory=dict)  # scalars as written (`no`, `1.0`)
    duplicates: list[Path_] = field(default_factory=list)  # keys given twice in one mapping

    def at(self, path: Path_, key: bool = False) -> str:
        """`file:line:col` of a value (or of its key), falling back to the nearest parent."""
        table = self.key_marks if key else self.marks
        while path:
            if path in table:
                return where(self.path, *table[path])
            table, path = self.marks, path[:-1]
        return where(self.path, *self.marks.get((), (1, 1)))

    def text(self, path: Path_, value: Any) -> Any:
        """A scalar as text when the schema wants text: `no` stays "no", not False."""
        if isinstance(value, (bool, int, float)) and path in self.texts:
            return self.texts[path]
        return value


def fail(path: Path | str, problem: str, fix: str, line: int | None = None, col=None) -> GuppyError:
    """A one-line error for the whole file (or one spot in it)."""
    return GuppyError(f"{where(path, line, col)}: {problem}. {fix}")


@dataclass(frozen=True)
class YamlKind:
    """What kind of file `read_yaml` reads, so its errors suggest that file's fixes."""

    name: str  # "persona", "sweep grid"
    empty_fix: str  # for an empty file
    top_fix: str  # for a file whose top level is not a mapping


PERSONA_YAML = YamlKind(
    "persona", "Start from `guppyforge new-persona NAME`", "Start with `guppyforge: 1`"
)


def read_yaml(path: str | Path, kind: YamlKind = PERSONA_YAML) -> Doc:
    """Load a persona-sized YAML mapping safely; raise GuppyError (one line) on anything hostile."""
    import hashlib

    path = Path(path)
    require_regular(path, f"A {kind.name} is a YAML text file")
    try:
        with open(path, "rb") as f:
            raw = f.read(bounds.MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(path, f"cannot read the file ({exc.strerror})", "Check the path") from None
    if len(raw) > bounds.MAX_FILE_BYTES:
        raise fail(
            path, "file is larger than the 1 MiB limit", f"A {kind.name} is a short text file"
        )
    if b"\0" in raw:
        raise fail(path, "file contains NUL bytes (binary data?)", "Give a YAML text file")
    try:
        text = raw.decode("utf-8-sig")  # a BOM from Windows editors is harmless
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise fail(path, "file is not valid UTF-8", "Save it as UTF-8", line) from None
    if not text.strip():
        raise fail(path, "file is empty", kind.empty_fix)
    try:
        _check_events(path, text, kind)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            doc = Doc(path, None, hashlib.sha256(raw).hexdigest())
            doc.data = _convert(doc, loader, root, ()) if root else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").rstrip(".")
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        if "nesting depth" in problem:  # libyaml's own cap (1000) can fire before ours
            raise fail(
                path,
                f"nesting deeper than {bounds.MAX_YAML_DEPTH} levels",
                "Flatten the file",
                line,
                col,
            ) from None
        source = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        raise fail(path, f"YAML syntax: {problem}", _syntax_fix(source), line, col) from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split()).rstrip(".")  # PyYAML's own text spans lines
        raise fail(path, f"YAML syntax: {problem}", "Fix the YAML") from None
    if doc.data is None:
        raise fail(path, "file is empty", kind.empty_fix)
    if not isinstance(doc.data, dict):
        found = "a list" if isinstance(doc.data, list) else "a single value"
        raise fail(path, f"top level is {found}, not a mapping", kind.top_fix, 1, 1)
    return doc


def _syntax_fix(line: str) -> str:
    """The likely fix for a YAML syntax error on `line`: the two mistakes persona authors make."""
    if "\t" in line[: len(line) - len(line.lstrip())] or line.lstrip().startswith("\t"):
        return "Indent with spaces, not tabs"
    if _UNQUOTED_TEMPLATE.match(line):
        return 'Quote a template that starts with `{`: write "{{ name }} ..." in quotes'
    return "Fix the YAML at this spot"


# A list item or value that starts with `{{` or `{%` unquoted: YAML reads `{` as a mapping.
_UNQUOTED_TEMPLATE = re.compile(r"\s*(-\s+|[^\s#'\"][^:#]*:\s+)?\{[{%]")


def _check_events(path: Path, text: str, kind: YamlKind) -> None:
    """Enforce depth, alias and expanded-size limits while streaming, before any tree exists."""
    depth = aliases = 0
    sizes: dict[str, int] = {}  # anchor -> nodes in its expanded subtree
    stack: list[list] = [[0, None]]  # per open collection: [expanded node count, anchor]
    for ev in yaml.parse(text, Loader=_Loader):
        mark = (ev.start_mark.line + 1, ev.start_mark.column + 1)
        tag = getattr(ev, "tag", None)
        if tag not in _ALLOWED_TAGS:
            short = tag.replace(_STD, "!!") if tag else tag
            raise fail(
                path,
                f"tag '{short}' is not allowed",
                f"Remove it: a {kind.name} holds plain data only",
                *mark,
            )
        if isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > bounds.MAX_YAML_ALIASES:
                raise fail(
                    path,
                    f"more than {bounds.MAX_YAML_ALIASES} aliases",
                    "Write the values out",
                    *mark,
                )
            if ev.anchor not in sizes:
                raise fail(path, f"alias *{ev.anchor} refers to itself", "Remove the alias", *mark)
            stack[-1][0] += sizes[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            stack[-1][0] += 1
            if ev.anchor:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > bounds.MAX_YAML_DEPTH:
                raise fail(
                    path,
                    f"nesting deeper than {bounds.MAX_YAML_DEPTH} levels",
                    "Flatten the file",
                    *mark,
                )
            stack.append([1, ev.anchor])
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
            count, anchor = stack.pop()
            if anchor:
                sizes[anchor] = count
            stack[-1][0] += count
        if stack[0][0] + sum(s[0] for s in stack[1:]) > bounds.MAX_YAML_NODES:
            raise fail(
                path,
                f"more than {bounds.MAX_YAML_NODES:,} values after expanding aliases",
                "Remove the aliases (is this a YAML bomb?)",
                *mark,
            )


def _convert(doc: Doc, loader: Any, node: yaml.Node, path: Path_) -> Any:
    """Turn a node tree into dicts/lists/scalars, recording marks and scalar texts by key path."""
    doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in _TYPED:
            return node.value  # strings, and timestamps kept as written (JSON-friendly)
        doc.texts[path] = node.value
        try:
            return loader.construct_object(node)
        except (ValueError, OverflowError):  # Python refuses ints of more than 4,300 digits
            line, col = doc.marks[path]
            raise fail(
                doc.path,
                f"a number of {len(node.value):,} characters is too long to read",
                "Write a short number",
                line,
                col,
            ) from None
    if isinstance(node, yaml.SequenceNode):
        return [_convert(doc, loader, item, (*path, i)) for i, item in enumerate(node.value)]
    loader.flatten_mapping(node)  # applies `<<: *base` merge keys in place
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            mark = key_node.start_mark
            template = isinstance(key_node, yaml.MappingNode) and key_node.flow_style
            raise fail(
                doc.path,
                "an unquoted template: YAML reads `{{` as a mapping"
                if template
                else "a key must be plain text",
                'Quote it: write "{{ name }} ..." in quotes' if template else "Use `name: value`",
                mark.line + 1,
                mark.column,  # the `{` that opened it
            )
        key = key_node.value  # as written: `no:` stays "no", `1:` stays "1"
        child = (*path, key)
        if key in out:
            doc.duplicates.append(child)
        doc.key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        out[key] = _convert(doc, loader, value_node, child)
    return out


def persona_file(name: str | None) -> FileKind:
    """A persona file as `--force` may replace it: a guppyforge persona of the same name."""

    def is_ours(path: Path) -> bool:
        try:
            data = read_yaml(path).data
        except GuppyError:
            return False
        return isinstance(data, dict) and "guppyforge" in data and data.get("name") == name

    return FileKind(f"a guppyforge persona named '{name}'", is_ours)
