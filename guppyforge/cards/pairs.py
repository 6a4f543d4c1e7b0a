"""`guppyforge import-pairs`: a sheet of question/answer pairs becomes a persona skeleton.

A workshop's spreadsheet (CSV), or a JSONL of pairs in any shape persona/chat_rows.py reads,
becomes a persona whose topics are clustered from the pairs and whose examples are the pairs
themselves, word for word: a character that validates at once and can then grow a grammar.

Topics: one per value of a `category` (or `topic`) column when there is one, named by its words
in any script (`Food & Drink` -> food_drink, `食べ物` as it is; two that would share a name get
`_2`). Without it, a small deterministic clustering: each pair goes to the content word of its
question that the most other questions share (ties: the alphabetically first), so "do you like
worms" and "are worms tasty" land in `worms`; a word shared by no other question leaves the
pair in `general`. Each topic's `ask` and `say` lists are its distinct questions and answers.
A text that holds template syntax (`{{`, `{%`, `{#`, `}}`, `{name}`) is left out of them: a
template would render it as code, and generate refuses a generated row that still holds it. It
stays in `examples`, which generate writes word for word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from guppyforge.cards import check_persona_text, dump_yaml, slugify
from guppyforge.errors import GuppyError
from guppyforge.files import claim_file, guard, write_atomic
from guppyforge.persona import bounds
from guppyforge.persona.chat_rows import convert, describe, read_small_file, recognise, text_of
from guppyforge.persona.yamlsafe import persona_file

MAX_TOPICS = 24  # clustered topics kept; smaller clusters join `general`
MAX_SHOWN = 20  # bad rows named one line each
GENERAL = "general"
_WORD = re.compile(r"[a-z][a-z']+")
# What generate refuses in a generated row: dataset/draw.py's TEMPLATE_TEXT, which this layer
# may not import (a test keeps the two the same).
TEMPLATE_TEXT = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\{[^\W\d]\w*(\([^)]*\))?\}")
SYNTAX = "template syntax ({{, }}, {%, {#, {name})"
# Words that say nothing about what a question is about.
_STOP = set(
    """a about after again all am an and any are as at be been being but by can could did do
    does doing for from had has have having he her here hers him his how i if in into is it its
    just like me more most my no nor not now of off on once only or other our out over own same
    she should so some such than that the their them then there these they this those through
    to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself tell think know really much many ever get got go going make
    want one two thing things""".split()
)

_HEADER = """\
# {name}: a persona skeleton made by `guppyforge import-pairs {source}` from {pairs:,} pairs.
# The pairs are its `examples`, kept word for word; each topic's `ask` and `say` are the
# questions and answers clustered into it ({how}), weighed by its pairs.
# Next: write the summary, add a `grammar` so a few lines make many sentences, `probes` for
# eval (docs/persona-format.md), then run `guppyforge validate {out}`.
"""


def _content_words(text: str) -> list[str]:
    return sorted({w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2})


def cluster(questions: list[str]) -> list[str]:
    """A topic name for each question: its most shared content word, else `general`."""
    words = [_content_words(q) for q in questions]
    shared = Counter(w for ws in words for w in ws)
    names = []
    for ws in words:
        best = min(ws, key=lambda w: (-shared[w], w), default=None)
        names.append(best if best and shared[best] > 1 else GENERAL)
    return names


def topic_names(categories: list[str]) -> list[str]:
    """A topic name for each category: its words in lowercase, in any script, joined by `_`
    ('Food & Drink' -> food_drink, 'café', '食べ物'); blank is `general`. Categories that differ
    only in case or spacing share a topic; others whose names would clash get `_2`, `_3`..."""
    keys = [" ".join(unicodedata.normalize("NFKC", c).split()).casefold() for c in categories]
    names: dict[str, str] = {"": GENERAL, GENERAL: GENERAL}
    for key in keys:
        if key not in names:
            base = "_".join(re.findall(r"[^\W_]+", key)) or "topic"  # no letter: emoji, `?`
            name, i = base, 2
            while name in names.values():
                name, i = f"{base}_{i}", i + 1
            names[key] = name
    return [names[key] for key in keys]


def import_pairs(
    path: str | Path,
    out: str | Path,
    name: str | None = None,
    fmt: str | None = None,
    force: bool = False,
    say=print,
) -> dict:
    """Write a persona skeleton made from the pairs in `path` to `out`; return what it holds."""
    path, out = Path(path), Path(out)
    name = slugify(name or path.stem)
    hint = "Pass --force to replace it, or --out NEW.yaml"
    claim_file(out, persona_file(name), force, inputs=[path], hint=hint)
    records = read_small_file(path, bounds.MAX_EXAMPLES_FILE_BYTES, bounds.MAX_EXAMPLES_FILE_ROWS)
    if not records:
        raise GuppyError(f"{path}: no rows. Give a file of question/answer pairs")
    shape, mapping = recognise(list(records[0]), fmt, path)
    rows, bad = [], []
    for n, record in enumerate(records, start=1):
        turns = convert(record, shape, mapping)
        if isinstance(turns, list) and turns[0][0] == "system":
            turns = turns[1:]  # a persona's examples are the user's turns and the character's
        if isinstance(turns, str):
            bad.append(f"{path}: row {n}: {turns}")
            continue
        category = text_of(record.get(mapping.get("topic", ""))) or ""
        rows.append((turns, category))
    if not rows:
        raise GuppyError(f"{path}: no good row. Mend the rows named above")
    by_column = "topic" in mapping
    if by_column:
        topics = topic_names([c for _, c in rows])
        how = f"one topic per {mapping['topic']}"
    else:
        topics = cluster([turns[0][1] for turns, _ in rows])
        how = "by the words their questions share"
    kept = {t for t, _ in Counter(topics).most_common(MAX_TOPICS)}
    topics = [t if t in kept else GENERAL for t in topics]
    grouped: dict[str, dict[str, list[str]]] = {}
    syntax = 0
    for (turns, _), topic in zip(rows, topics, strict=True):
        t = grouped.setdefault(topic, {"ask": [], "say": []})
        for role, content in turns:
            side = t["ask"] if role == "user" else t["say"]
            text = " ".join(content.split())
            if TEMPLATE_TEXT.search(text):
                syntax += 1
            elif text not in side:
                side.append(text)
    # A topic needs a question and an answer to make rows; an example keeps its pair either way.
    grouped = {t: v for t, v in grouped.items() if v["ask"] and v["say"]}
    say(describe(shape, mapping, len(records), len(grouped) if by_column else 0))
    for line in bad[:MAX_SHOWN]:
        say(f"bad row: {line}")
    if len(bad) > MAX_SHOWN:
        say(f"bad row: ... and {len(bad) - MAX_SHOWN:,} more")
    if bad:
        say(f"{len(bad):,} bad rows left out, {len(rows):,} kept")
    if syntax:
        say(
            f"texts that hold {SYNTAX}: {syntax:,}, kept word for word in `examples` and left "
            "out of the topics' ask and say"
        )
    if not grouped:
        raise GuppyError(
            f"{path}: no topic has both a question and an answer free of {SYNTAX}, so the "
            "persona could make no row. Keep some pairs without it"
        )
    counts = Counter(topics)
    persona = {
        "guppyforge": "1.2",
        "name": name,
        "display_name": name.replace("-", " ").title(),
        # Like an imported card's: true as written, and the first line a person rewrites.
        "summary": f"{name.replace('-', ' ').title()}, made from {len(rows):,} question/answer pairs.",
        "topics": {
            t: {"weight": counts[t], "ask": v["ask"], "say": v["say"]}
            for t, v in sorted(grouped.items())
        },
        "examples": [
            {
                **({"topic": topic} if topic in grouped else {}),
                "turns": [
                    {"user": u, "assistant": a}
                    for (_, u), (_, a) in zip(turns[0::2], turns[1::2], strict=True)
                ],
            }
            for (turns, _), topic in zip(rows, topics, strict=True)
        ],
    }
    header = _HEADER.format(name=name, source=path.name, pairs=len(rows), how=how, out=out)
    text = header + dump_yaml(persona)
    if len(text.encode()) > bounds.MAX_FILE_BYTES:
        raise GuppyError(
            f"{path}: {len(rows):,} pairs make a persona over the 1 MiB limit. Train on the "
            "file itself (`guppyforge train FILE`), or keep fewer pairs"
        )
    check_persona_text(text, path, out, full=True)  # what is written validates
    guard(out, lambda: write_atomic(out, text))
    return {"out": out, "topics": len(grouped), "examples": len(rows), "bad_rows": len(bad)}
