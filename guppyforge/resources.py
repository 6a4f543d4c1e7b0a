"""The folders that ship inside the package: the built-in personas and the templates.

In the repository they sit at the top level (`personas/`, `templates/`), where people look for
them; pyproject.toml maps them into the package as `guppyforge.personas` and
`guppyforge.templates`, so a wheel carries them. Code reaches them only through
importlib.resources, which finds them the same way in a wheel and in an editable install.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


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
