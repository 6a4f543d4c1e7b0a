"""Load a persona YAML file into typed, frozen objects, checking everything a user can get wrong.

`load_persona` raises the first problem as a one-line `GuppyError`; `validate_persona` collects
every problem, the warnings and the capacity report for `guppyforge validate`. The format is
documented in docs/persona-format.md.
"""

from __future__ import annotations

from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.persona import limits
from guppyforge.persona.capacity import capacity
from guppyforge.persona.checks import (
    pairing_problems,
    placeholder_warnings,
    sentence_warnings,
    smoke_test,
)
from guppyforge.persona.conversations import Sampler, compile_persona, remember_compiled
from guppyforge.persona.forecast import forecast
from guppyforge.persona.lints import reply_lints
from guppyforge.persona.offtopic import compile_say
from guppyforge.persona.schema import Reader
from guppyforge.persona.types import Persona, Report
from guppyforge.persona.yamlsafe import read_yaml


def load_persona(path: str | Path) -> Persona:
    """Load and fully check a persona file; raise GuppyError with the first problem."""
    persona, errors, _, _ = _load(path)
    if errors:
        raise GuppyError(errors[0])
    return persona


def validate_persona(path: str | Path, target: int = limits.DEFAULT_TARGET) -> Report:
    """Check a persona and report every problem, every warning and its capacity."""
    try:
        persona, errors, warnings, doc = _load(path)
    except GuppyError as exc:  # the file could not be read as YAML at all
        return Report([str(exc)], [])
    if errors:
        return Report(errors, warnings)
    errors += smoke_test(persona)
    if errors:
        return Report(errors, warnings)
    sampler = Sampler(persona)
    warnings += sentence_warnings(sampler) + placeholder_warnings(persona, doc.at)
    warnings += reply_lints(sampler.compiled)
    table = capacity(persona)
    total = sum(c.conversations for c in table.values())
    if total < target:
        warnings.append(f"{doc.at(('topics',), key=True)}: capacity: {total:,} distinct conversations, fewer "
                        f"than the {target:,} requested. Add alternatives or templates")  # fmt: skip
    predicted = forecast(persona, target, sampler=sampler)
    warnings += [p.warning(target) for p in predicted.pairs if p.dry]
    weights = sum(t.weight for t in persona.topics.values())
    for name, t in persona.topics.items():
        share = target * t.weight / weights
        rows = predicted.rows[name]
        if abs(rows - share) > max(0.10 * share, 10):  # as generate warns, but before drawing
            where = t.ask[0] if t.ask else None
            at = f"{where.file}:{where.line}:{where.column}" if where else str(persona.path)
            warnings.append(f"{at}: topics.{name}: about {rows:,} rows predicted for "
                            f"-n {target:,}, but its weight asks for {round(share):,}. Fix its "
                            "dry pairs (above), or change its weight")  # fmt: skip
    return Report(errors, warnings, table, predicted)


def _load(path: str | Path) -> tuple[Persona, list[str], list[str], object]:
    r = Reader(read_yaml(path))
    persona = r.persona()
    # Templates are checked even after other schema errors, so one run reports every problem.
    compiled = compile_persona(persona, r.errors.append if r.grammar_ok else lambda e: None)
    for _, c in compile_say(persona, r.errors.append if r.grammar_ok else lambda e: None):
        compiled.used_symbols.update(c.symbols, c.picks)
    if not r.errors:  # pairing only means something once every template compiled
        errors, warnings = pairing_problems(compiled, persona.spec >= (1, 1))
        r.errors += errors
        r.warnings += warnings
    if not r.errors:  # after an error, "unused" is likely noise (a refused template uses nothing)
        used = set(compiled.used_symbols)
        for name, sym in persona.grammar.items():
            if name not in used:
                r.warnings.append(f"{sym.where}: symbol is never used. Use it or delete it")
        remember_compiled(persona, compiled)  # a Sampler of this persona need not parse again
    return persona, r.errors, r.warnings, r.doc
