"""Persona templates: a Jinja2 sandbox with a whitelist, English inflection filters, and a fast
path for plain text + symbols.

A stranger's template can never run code: the sandbox sees only the grammar's symbols, `pick`,
and the filters here (plural, singular, a_an, verb from the inflect package, plus a few string
ones). Most templates are plain text with `{{ symbol }}`; those skip Jinja entirely.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

from guppyforge.persona.bounds import MAX_MESSAGE_CHARS, MAX_TAG_TOKENS, MAX_TEMPLATE_NESTING

# --- English inflection for persona filters: plural, singular, a/an, and verb agreement.
#
# Everything comes from the `inflect` library (a kept dictionary of irregular nouns and verbs, and
# of compounds: "cup of tea" -> "cups of tea"), never from rules written here. Each filter is a pure
# function of one bounded string, cached: a persona renders the same few values over and over, and
# nothing a persona writes reaches inflect's engine except a short string to inflect.

_MAX_INFLECT = 80  # characters: longer text is returned as it is (bounds inflect's regex work)


@lru_cache(maxsize=1)
def _engine():
    import inflect

    engine = inflect.engine()
    engine.classical(all=False)  # everyday English: "operas", not "opera" as the plural of "opus"
    return engine


def _inflectable(text: str) -> bool:
    word = text.rpartition(" ")[2].replace("-", "")
    return 0 < len(text) <= _MAX_INFLECT and word.isascii() and word.isalpha()


# Nouns that end in -s and still take "is": inflect reads them as plurals ("politics are").
_SINGULAR_IN_S = frozenset(
    "news politics physics maths mathematics economics athletics gymnastics ethics linguistics "
    "statistics measles mumps billiards electronics genetics robotics acoustics".split()
)


@lru_cache(maxsize=4096)
def is_plural(text: str) -> bool:
    """True when `text` reads as a plural noun phrase ("spiders", "long walks"; not "fish", nor
    "politics")."""
    text = str(text)
    if not _inflectable(text) or _uncountable(text):
        return False
    engine = _engine()
    single = engine.singular_noun(text)
    if not single or single == text or engine.plural_noun(single) != text:
        return False
    # inflect also strips the s of a singular that ends in one (octopus -> "octopu", glass ->
    # "glas"): such a word's own plural adds -es (octopuses, glasses), a plural's adds only -s.
    head = text.partition(" of ")[0]
    return engine.plural_noun(head) != head + "es"


@lru_cache(maxsize=4096)
def plural(text: str) -> str:
    """Plural of a noun phrase: e-reader -> e-readers, cup of tea -> cups of tea, mouse -> mice.
    Already plural (or not English letters): unchanged."""
    text = str(text)
    if not _inflectable(text) or is_plural(text) or _uncountable(text):
        return text
    return _keep_case(text, _engine().plural_noun(text.lower()))


def _uncountable(text: str) -> bool:
    return text.rpartition(" ")[2].lower() in _SINGULAR_IN_S


@lru_cache(maxsize=4096)
def singular(text: str) -> str:
    """Singular of a noun phrase: spiders -> spider, cups of tea -> cup of tea, mice -> mouse."""
    text = str(text)
    if not _inflectable(text):
        return text
    return _keep_case(text, _engine().singular_noun(text.lower()) or text.lower())


@lru_cache(maxsize=4096)
def a_an(text: str) -> str:
    """Prefix the right English article: apple -> an apple, unicorn -> a unicorn, hour -> an hour;
    a plural takes none (keys -> keys)."""
    text = str(text)
    if not text[:1].isascii() or not text[:1].isalpha() or len(text) > _MAX_INFLECT:
        return text  # digits or another script: no article rule we can trust
    if is_plural(text):
        return text
    return _engine().a(text)


@lru_cache(maxsize=4096)
def verb(subject: str, form: str) -> str:
    """`form` (a verb as it goes with "it": is, has, does, frightens) agreeing with `subject`:
    `{{ thing }} {{ thing | verb('is') }}` -> "spiders are", "the sea is"."""
    subject, form = str(subject), str(form)
    if len(form) > _MAX_INFLECT or not is_plural(subject):
        return form
    return _keep_case(form, _engine().plural_verb(form.lower()))


def _keep_case(original: str, out: str) -> str:
    if original.isupper() and len(original) > 1:
        return out.upper()
    if original[:1].isupper():
        return out[:1].upper() + out[1:]
    return out


# --- Persona templates: a Jinja2 sandbox with a whitelist, and a fast path for plain text + symbols.
#
# Every template is parsed once at load time and its syntax tree checked against a whitelist, so a
# stranger's file can neither reach Python objects (`x.__class__`) nor loop, and render work stays
# linear in the template's size. Templates that are only text and `{{ name | filter }}` (nearly all
# of them) compile to a list of parts that Python joins directly: no Jinja call per sample.

# --- filters --------------------------------------------------------------------------------


def capitalize(text: str) -> str:
    """Upper-case the first letter only (Jinja's own also lower-cases the rest: 'Bob' -> 'bob')."""
    text = str(text)
    return text[:1].upper() + text[1:]


# Filters usable in grammar text and in the fast path: one argument, string in, string out.
TEXT_FILTERS = {
    "capitalize": capitalize,
    "upper": lambda s: str(s).upper(),
    "lower": lambda s: str(s).lower(),
    "title": lambda s: str(s).title(),
    "trim": lambda s: str(s).strip(),
    "plural": plural,
    "singular": singular,
    "a_an": a_an,
}
# Filters with one constant argument, e.g. `{{ thing | verb('is') }}`: (value, argument) -> text.
ARG_FILTERS = {"verb": verb}
# Jinja built-ins also allowed in templates: none can grow a value or reach an object.
_JINJA_FILTERS = {"default", "d", "first", "last", "length", "count", "string"}
_TESTS = {"defined", "undefined", "none", "string", "number", "eq", "ne", "in", "lower", "upper"}
RESERVED = {"pick", "true", "false", "none", "True", "False", "None", "loop", "self"}


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """The one sandbox every template renders in."""
    env = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    env.filters.update(TEXT_FILTERS)
    env.filters.update(ARG_FILTERS)
    return env


# --- compiling ------------------------------------------------------------------------------


class TemplateProblem(ValueError):
    """Why a template was refused: `problem` and `fix` for the one-line error, `line` inside it."""

    def __init__(self, problem: str, fix: str, line: int = 1):
        super().__init__(problem)
        self.problem, self.fix, self.line = problem, fix, line


@dataclass(frozen=True)
class Compiled:
    """A checked template. `parts` is the fast path (None when Jinja must render it).

    Each part is literal text, or `(fresh, symbol, filters)`: fresh=False reads the value bound
    for the whole conversation, fresh=True draws a new one (`pick('x')`, or any grammar reference).
    """

    source: str
    parts: tuple | None
    jinja: Any  # a compiled jinja2.Template when parts is None
    symbols: tuple[str, ...]  # symbols bound by this template, in first-use order
    picks: tuple[str, ...]  # symbols drawn fresh, once per occurrence
    tested: tuple[str, ...] = ()  # symbols under `is defined`/`is undefined`: optional in 1.1


_ALLOWED = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Filter,
    nodes.Call,
    nodes.If,
    nodes.Assign,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.List,
    nodes.Tuple,
    nodes.Test,
)
_REFUSED_NAMES = {
    "For": "loops ({% for %})",
    "Macro": "macros",
    "CallBlock": "call blocks",
    "Include": "includes",
    "Import": "imports",
    "FromImport": "imports",
    "Extends": "extends",
    "Block": "blocks",
    "FilterBlock": "filter blocks",
    "With": "with blocks",
    "AssignBlock": "block assignments ({% set x %}...{% endset %})",
    "Getattr": "attribute access (x.y)",
    "Getitem": "item access (x['y'])",
    "Slice": "slices",
    "Dict": "dict literals",
    "Mul": "'*'",
    "Add": "'+' (use '~' to join text)",
    "Sub": "'-'",
    "Div": "'/'",
    "FloorDiv": "'//'",
    "Mod": "'%'",
    "Pow": "'**'",
    "Neg": "'-'",
    "Pos": "'+'",
}


def compile_text(text: str, symbols: dict[str, Any], grammar: bool = False) -> Compiled:
    """Parse and check one template (or grammar alternative); raise TemplateProblem if refused."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise TemplateProblem(
            f"text is {len(text):,} characters, more than the {MAX_MESSAGE_CHARS:,} limit",
            "Keep one message short",
        )
    if "{" not in text:  # plain text: the common case, no parsing needed
        return Compiled(text, (text,) if text else (), None, (), ())
    empty = _EMPTY.search(text)
    if empty:
        raise TemplateProblem(
            f"empty {empty[0]!r}",
            "Put a symbol name inside, e.g. {{ food }}, or remove it",
            text.count("\n", 0, empty.start()) + 1,
        )
    env = environment()
    try:
        _check_nesting(env, text)
        tree = env.parse(text)
        checker = _Checker(symbols)
        checker.visit(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            f"template syntax: {exc.message}", "Check the {{ }} and {% %} pairs", exc.lineno or 1
        ) from None
    except RecursionError:  # a backstop: _check_nesting keeps every tree far below this
        raise TemplateProblem("expressions nested too deep", "Split it up") from None
    parts = _fast_parts(tree, symbols)
    if grammar and parts is None:
        raise TemplateProblem(
            "grammar text may only use {{ name }} or {{ name | filter }}",
            "Move logic into a topic template",
            checker.first_line or 1,
        )
    if grammar and parts is not None:  # every grammar reference is a fresh draw
        parts = tuple(p if isinstance(p, str) else (True, p[1], p[2]) for p in parts)
    bound = () if grammar else tuple(checker.free)  # first-use order: sets would vary by process
    picks = tuple(checker.picks) + (tuple(checker.free) if grammar else ())
    jinja = env.from_string(tree) if parts is None else None
    return Compiled(text, parts, jinja, bound, picks, tuple(checker.tested))


_EMPTY = re.compile(r"\{\{[\s-]*\}\}|\{%[\s-]*%\}")


def _check_nesting(env: SandboxedEnvironment, text: str) -> None:
    """Refuse, from the tokens alone, a template whose tree would be deep: Jinja's parser and
    compiler recurse once per level, and Python's recursion limit is no error message."""
    depth = blocks = tag = 0
    prev = ""
    for line, kind, value in env.lex(text):
        if kind == "whitespace":
            continue
        if kind in ("variable_begin", "block_begin"):
            tag = 0
        tag += 1
        if kind == "operator":
            depth += (value in "([{") - (value in ")]}")
        if kind == "name" and value in ("if", "endif") and prev == "block_begin":
            blocks += 1 if value == "if" else -1
        prev = kind
        if max(depth, blocks) > MAX_TEMPLATE_NESTING:
            raise TemplateProblem(
                f"nested more than {MAX_TEMPLATE_NESTING} levels deep",
                "Flatten it, or move the variety into grammar symbols",
                line,
            )
        if tag > MAX_TAG_TOKENS:
            raise TemplateProblem(
                f"one {{{{ }}}} or {{% %}} holds more than {MAX_TAG_TOKENS} tokens",
                "Split it, or use grammar symbols",
                line,
            )


def _fast_parts(tree: nodes.Template, symbols: dict[str, Any]) -> tuple | None:
    """Text + `{{ name | f | g }}` + `{{ pick('x') | f }}` as parts; None if anything else."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None if tree.body else ()
    parts: list = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        filters = []
        while isinstance(node, nodes.Filter):
            if node.name in TEXT_FILTERS and not node.args:
                filters.append(TEXT_FILTERS[node.name])
            elif node.name in ARG_FILTERS and _const_word(node) is not None:
                filters.append(functools.partial(_flip, ARG_FILTERS[node.name], _const_word(node)))
            else:
                break
            node = node.node
        if isinstance(node, nodes.Name) and node.name in symbols:
            parts.append((False, node.name, tuple(reversed(filters))))
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            parts.append((True, node.args[0].value, tuple(reversed(filters))))
        else:
            return None
    return tuple(parts)


def _const_word(node: nodes.Filter) -> str | None:
    """The one quoted argument of a filter like verb('is'), or None."""
    if len(node.args) != 1 or not isinstance(node.args[0], nodes.Const):
        return None
    value = node.args[0].value
    return value if isinstance(value, str) else None


def _flip(f, argument: str, value: str) -> str:
    return f(value, argument)


class _Checker:
    """Walk a template's tree, refusing anything off the whitelist; collect the names it uses."""

    def __init__(self, symbols: dict[str, Any]):
        self.symbols = symbols
        self.assigned: set[str] = set()
        self.free: list[str] = []  # symbols read, in first-use order
        self.picks: list[str] = []
        self.tested: list[str] = []
        self.first_line = 0

    def refuse(self, node: nodes.Node, problem: str, fix: str) -> None:
        raise TemplateProblem(problem, fix, node.lineno or 1)

    def visit(self, node: nodes.Node, in_set: bool = False) -> None:
        kind = type(node).__name__
        if not isinstance(node, _ALLOWED):
            what = _REFUSED_NAMES.get(kind, f"'{kind}' expressions")
            self.refuse(node, f"{what} not allowed in templates", "Use grammar symbols for variety")
        if not isinstance(node, (nodes.Template, nodes.Output, nodes.TemplateData)):
            self.first_line = self.first_line or node.lineno
        if isinstance(node, nodes.Assign):
            if not isinstance(node.target, nodes.Name):
                self.refuse(node, "only `{% set name = value %}` is allowed", "Set one name")
            self.visit(node.node, in_set=True)
            self.assigned.add(node.target.name)
            return
        if isinstance(node, nodes.Name):
            self._name(node, in_set)
        elif isinstance(node, nodes.Call):
            self._pick(node)
            return
        elif isinstance(node, nodes.Filter) and node.name in ARG_FILTERS:
            if _const_word(node) is None:
                self.refuse(
                    node,
                    f"filter '{node.name}' takes one quoted word",
                    f"Write {{{{ thing | {node.name}('is') }}}}",
                )
        elif isinstance(node, nodes.Filter) and node.name not in TEXT_FILTERS:
            if node.name not in _JINJA_FILTERS:
                allowed = ", ".join(sorted(set(TEXT_FILTERS) | set(ARG_FILTERS) | _JINJA_FILTERS))
                self.refuse(node, f"filter '{node.name}' is not allowed", f"Use one of: {allowed}")
        elif isinstance(node, nodes.Test) and node.name not in _TESTS:
            self.refuse(node, f"test '{node.name}' is not allowed", f"Use one of: {sorted(_TESTS)}")
        elif isinstance(node, nodes.Test) and node.name in ("defined", "undefined"):
            if isinstance(node.node, nodes.Name) and node.node.name not in self.tested:
                self.tested.append(node.node.name)
        if isinstance(node, (nodes.Filter, nodes.Test, nodes.Call)) and (
            node.kwargs or node.dyn_args or node.dyn_kwargs
        ):
            self.refuse(node, "keyword or * arguments are not allowed", "Pass plain values")
        for child in node.iter_child_nodes():
            self.visit(child, in_set)

    def _name(self, node: nodes.Name, in_set: bool) -> None:
        name = node.name
        if name in self.assigned:
            if in_set:  # `{% set b = a ~ a %}` chained would double a value per line
                self.refuse(
                    node,
                    f"'{name}' is a set variable; a set value may only use symbols",
                    "Build the value from symbols and text",
                )
            return
        if name == "pick":
            self.refuse(node, "pick must be called: pick('symbol')", "Write {{ pick('food') }}")
        if name not in self.symbols:
            hint = did_you_mean(name, self.symbols) or "Define it under grammar"
            self.refuse(node, f"unknown symbol '{name}'", hint)
        if name not in self.free:
            self.free.append(name)

    def _pick(self, node: nodes.Call) -> None:
        ok = isinstance(node.node, nodes.Name) and node.node.name == "pick"
        if not ok or len(node.args) != 1 or not isinstance(node.args[0], nodes.Const):
            self.refuse(
                node, "calls are not allowed, except pick('symbol')", "Write {{ pick('food') }}"
            )
        name = node.args[0].value
        if name not in self.symbols:
            hint = did_you_mean(str(name), self.symbols) or "Define it under grammar"
            self.refuse(node, f"unknown symbol '{name}'", hint)
        self.picks.append(name)


def did_you_mean(word: str, choices) -> str:
    """`Did you mean 'food'?` for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"Did you mean '{close[0]}'?" if close else ""
