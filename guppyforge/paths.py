"""Where the repository's shipped folders live (personas/, templates/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERSONAS_DIR = ROOT / "personas"
TEMPLATES_DIR = ROOT / "templates"


def builtin_persona(name: str) -> Path | None:
    """The path of a built-in persona by name (`guppy`), or None."""
    path = PERSONAS_DIR / f"{name}.yaml"
    return path if path.is_file() else None
