"""Lints about what a reply answers: warnings `validate` gives with the lines involved.

Pairing (pairing.py) decides which replies may answer which questions; these point at the places
where the pairing is allowed but reads badly:
- a reply that reads none of the values an open question names ("what do you think of
  {{ thing }}" answered by a reply about something else): it answers every such question alike
  (a yes-or-no question, "do you want some {{ food }}", may well be answered "always.");
- a follow-up that asks both for a reason ("why") and for something else ("what else do you
  like"): every reply of the step answers every one of its questions, so a reason is given to
  "what else" and the reverse.
"""

from __future__ import annotations

import re

from guppyforge.persona.pairing import first_pairs, stated

_WORD_ANY = re.compile(r"[^\W\d_]+")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def reply_lints(compiled) -> list[str]:
    """Every lint of every topic, at `file:line:col`."""
    out = []
    for t in compiled.topics:
        out += _ignored_values(t)
        for k, st in enumerate(t.stages[1:]):
            out += _unlike_questions(t.name, k, st)
    return out


def _ignored_values(t) -> list[str]:
    """A reply that answers questions naming a value, and reads none of those values."""
    first = t.stages[0]
    out = []
    for s, (reply, rc) in enumerate(first.says):
        reads = set(rc.symbols) | set(rc.picks)
        asked = []
        for a, s2 in first_pairs(first, (0, 0)):
            question = first.asks[a][0]
            name = _named_value(question, first) if s2 == s else None
            if name and name not in reads:
                asked.append((question, name))
        if asked:
            q, name = asked[0]
            more = f" (and {len(asked) - 1} more)" if len(asked) > 1 else ""
            out.append(f"{reply.where}: answers the question at line {q.line}:{q.column}{more}, "
                       f"which names a {{{{ {name} }}}}, but never mentions it, so it gives the "
                       f"same answer whatever {name} was asked about. Echo {{{{ {name} }}}} in "
                       "the reply, or move the reply to a topic whose questions name nothing")  # fmt: skip
    return out


def _compiled(stage, template):
    return next(c for t, c in stage.asks if t is template)


def _named_value(template, stage) -> str | None:
    """The symbol a question is about ("think of {{ thing }}"), not a greeting or filler
    symbol: one that stands where the question's object would. None if there is none."""
    if _kind(template.text) not in ("open", "reason"):
        return None  # "do you want some {{ food }}" -> "always." answers it well enough
    c = _compiled(stage, template)
    for name in stated(c):
        if re.search(r"\b(of|like|about|love|hate|want|eat|favourite)\s+"
                     r"(some |the |a |an |your )?\{\{\s*" + re.escape(name) + r"\b",
                     template.text):  # fmt: skip
            return name
    return None


def _unlike_questions(topic: str, k: int, st) -> list[str]:
    """Questions of one follow-up that ask for another kind of answer than the rest of it: a
    reason ("why") where the others ask for something else ("what else..."), or the reverse."""
    kinds = [_kind(t.text) for t, _ in st.asks]
    if not {"reason", "more"} <= set(kinds):
        return []
    known = [x for x in kinds if x in ("reason", "more")]
    usual = max(dict.fromkeys(known), key=known.count)  # a tie: the kind asked first
    out = []
    for (t, _), kind in zip(st.asks, kinds, strict=True):
        if kind in ("reason", "more") and kind != usual:
            like = next(q for (q, _), x in zip(st.asks, kinds, strict=True) if x == usual)
            out.append(f"{t.where}: asks for {_KINDS[kind]}, unlike the question at line "
                       f"{like.line}:{like.column} ({_KINDS[usual]}) of the same follow-up, yet "
                       "every reply of that follow-up answers both. Give it a follow-up of its "
                       "own, or reword it as the same kind of question")  # fmt: skip
    return out


_KINDS = {"reason": "a reason", "more": "something else", "yesno": "a yes or no",
          "open": "an open answer"}  # fmt: skip
_AUX = {"do", "does", "did", "are", "is", "was", "were", "can", "could", "will", "would",
        "have", "has", "should", "may", "shall", "am"}  # fmt: skip


def _kind(text: str) -> str | None:
    """What a question asks for. Only a reason ("why", "how come", "what made...") against
    something else ("what else...", "anything else") counts as unlike: a reply written as
    the reason ("it makes me feel calm.") reads wrong after "what else do you like"."""
    words = _WORD_ANY.findall(_JINJA.sub(" ", text).lower())
    if not words:
        return None
    if words[0] == "why" or words[:2] in (["how", "come"], ["what", "for"], ["what", "made"]):
        return "reason"
    if {"else", "other"} & set(words[:3]):
        return "more"
    if words[0] in _AUX:
        return "yesno"
    if words[0] in {"what", "which", "where", "when", "who", "how", "tell"}:
        return "open"
    return None
    if words[0] == "why" or words[:2] == ["how", "come"] or words[:2] == ["what", "for"]:
        return "reason"
    if words[0] in _AUX:
        return "yesno"
    if words[0] in {"what", "which", "where", "when", "who", "how", "anything", "tell"}:
        return "open"
    return None
