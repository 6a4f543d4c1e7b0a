"""`guppyforge new-persona`: write a commented starter persona, or a renamed copy of another one."""

from __future__ import annotations

import re
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.files import builtin_persona, claim_file, guard, templates_dir, write_atomic
from guppyforge.persona.schema import load_persona
from guppyforge.persona.yamlsafe import persona_file

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# The top-level `name:` key and its value (plain or quoted), leaving any comment after it.
_NAME_LINE = re.compile(r"^name:[ \t]*(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s#]+)", re.MULTILINE)


def starter_text(name: str) -> str:
    """The starter persona (templates/persona.yaml.j2) for a character called `name`."""
    from jinja2 import Environment, StrictUndefined

    # [[ ]] and [% %] delimiters: the starter itself is full of persona {{ templates }}.
    env = Environment(
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    source = (templates_dir() / "persona.yaml.j2").read_text(encoding="utf-8")
    display = re.sub(r"[-_]+", " ", name).title()
    return env.from_string(source).render(name=name, display_name=display)


def copied_text(name: str, source: str) -> str:
    """The text of a built-in persona (`guppy`) or a persona file, with `name:` set to `name`.

    The text is edited, not re-dumped, so every comment of the original survives.
    """
    path = builtin_persona(source) or Path(source)
    if not path.is_file():
        raise GuppyError(f"{source}: no such built-in persona or file. See `guppyforge personas`")
    load_persona(path)  # refuse to copy a broken persona: the copy would be broken too
    text = path.read_bytes().decode("utf-8-sig")
    text, found = _NAME_LINE.subn(f"name: {name}", text, count=1)
    if not found:
        raise GuppyError(f"{path}: no top-level `name:` line to rename. Add `name: {name}`")
    return text


def write_persona(name: str, source: str | None = None, directory: str | Path = ".") -> Path:
    """Write DIRECTORY/NAME.yaml from the starter (or a copy of `source`); never overwrite."""
    if not _SLUG.fullmatch(name):
        raise GuppyError(
            f"{name}: not a valid persona name. Use lowercase letters, digits, - and _"
        )
    out = Path(directory) / f"{name}.yaml"
    if Path(directory).exists() and not Path(directory).is_dir():
        raise GuppyError(f"--dir {directory}: is a file, not a folder. Pick another --dir")
    # No --force here: a persona is hand-edited work, so an existing file is never replaced.
    hint = "Choose another name or --dir, or delete it first"
    claim_file(out, persona_file(name), False, hint=hint, elsewhere=hint)
    text = starter_text(name) if source is None else copied_text(name, source)
    guard(out, lambda: write_atomic(out, text))  # a crash never leaves half a persona behind
    return out
