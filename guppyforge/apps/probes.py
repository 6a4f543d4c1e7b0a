"""The prompts `eval` asks beyond the persona's own probes, and how their replies are judged.

- perturbed: the persona's own probes typed the way people type (persona/variation.py), one
  variant per sample, so a model that learned the file's phrasings rather than the character
  shows the gap;
- blind: a probe file written by someone who never read the persona (`--probes FILE`; for a
  built-in, personas/blind/NAME.yaml when it exists);
- off-topic: a sample of the held-out part of the shipped pool (persona/offtopic.py), which
  generate never uses. A reply passes when it stays in character: no `never_say` phrase, no
  chatbot phrase, the persona's style (case, sentence cap), and only words the character says
  in its training replies (a model that falls apart on a strange prompt makes words up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from pathlib import Path

from guppyforge.apps.trace import words
from guppyforge.errors import GuppyError
from guppyforge.persona.offtopic import pool
from guppyforge.persona.schema import Reader
from guppyforge.persona.types import Persona, Probe, Variation
from guppyforge.persona.variation import Rng, Varier
from guppyforge.persona.yamlsafe import read_yaml
from guppyforge.resources import builtin_persona, personas_dir

# The sentence ends `generate` cuts replies at (style.max_sentences), so both count alike.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
# What breaks character whatever the persona says: a model that learned chatbot talk.
CHATBOT_PHRASES = ("as an ai", "language model", "assistant")


def blind_file(persona: Persona) -> Path | None:
    """The blind probe set shipped for a built-in persona of this name, if there is one."""
    if builtin_persona(persona.name) is None:
        return None
    path = personas_dir() / "blind" / f"{persona.name}.yaml"
    return path if path.is_file() else None


def read_probes(doc, style) -> tuple[Probe, ...]:
    """The `probes:` of a probe file (a blind set): checked like a persona's, first error raised.

    Other top-level keys (who wrote it, from what) are the file's own business and are ignored.
    """
    r = Reader(doc)
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("probes"), list):
        raise GuppyError(f"{doc.path}:1:1: probes: a probe file needs a `probes:` list. Write "
                         "'- {ask: ..., expect_any: [...]}' items under it")  # fmt: skip
    probes = r._probes(doc.data["probes"], style)
    if r.errors:
        raise GuppyError(r.errors[0])
    return probes


def load_probe_file(path: str | Path, persona: Persona) -> tuple[Probe, ...]:
    """A probe file's probes; the persona's never_say is forbidden in them too."""
    return read_probes(read_yaml(path), persona.style)


def perturbed_asks(persona: Persona, probes, samples: int, seed: int) -> list[list[str]]:
    """Per probe, `samples` variants of its ask, each changed at least once where it can be."""
    v = persona.variation
    # Every variant is varied; a persona that turned variation off still gets the defaults.
    v = dataclasses.replace(v if v.share > 0 else Variation(), share=1.0)
    varier = Varier(dataclasses.replace(persona, variation=v), seed)
    return [[varier.text(p.ask, Rng(seed, i, salt=2 + s)) for s in range(samples)]
            for i, p in enumerate(probes)]  # fmt: skip


def offtopic_sample(n: int, seed: int) -> list[str]:
    """`n` prompts of the held-out pool (all of it if n is larger), chosen by the seed."""
    prompts = list(pool("heldout"))
    return random.Random(f"{seed}:offtopic").sample(prompts, min(n, len(prompts)))


def offtopic_failures(text: str, persona: Persona, vocabulary: set[str] | None = None) -> list[str]:
    """Why a reply to an off-topic prompt breaks character (an empty list: it stays in it).

    `vocabulary`: the words of the training replies; a reply with any other word fails.
    """
    low = text.casefold()
    failures = [] if text.strip() else ["empty reply"]
    failures += [f"says '{p}'" for p in (*persona.style.never_say, *CHATBOT_PHRASES) if p in low]
    failures += style_failures(text, persona.style)
    unknown = [w for w in words(text) if vocabulary is not None and w not in vocabulary]
    if unknown:
        failures.append(f"words never in its training replies: {', '.join(unknown[:3])}")
    return list(dict.fromkeys(failures))


def has_phrase(text_words: list[str], phrase: str) -> bool:
    """True when the words of `phrase` appear together, in order, among `text_words`.

    Whole words only: "sun" is not found in "sunday", and "tuna" is found in "tuna!".
    """
    want = words(phrase)
    n = len(want)
    return n > 0 and any(text_words[i : i + n] == want for i in range(len(text_words) - n + 1))


def count_sentences(text: str) -> int:
    ends = list(_SENTENCE_END.finditer(text))
    tail = text[ends[-1].end() :] if ends else text
    return len(ends) + (1 if tail.strip() else 0)


def check_reply(text: str, probe, style) -> list[str]:
    """The reasons a reply fails a probe (an empty list: it passes)."""
    failures = []
    found = words(text)
    if probe.expect_any and not any(has_phrase(found, w) for w in probe.expect_any):
        failures.append("no expected word")
    low = text.casefold()
    failures += [f"says '{p}'" for p in (*probe.forbid, *style.never_say) if p.casefold() in low]
    failures += style_failures(text, style)
    return list(dict.fromkeys(failures))  # probe.forbid may already hold never_say


def style_failures(text: str, style) -> list[str]:
    """The persona's style rules a reply breaks (case, sentence cap)."""
    failures = []
    if style.case == "lower" and text != text.lower():
        failures.append("not lowercase")
    if style.case == "upper" and text != text.upper():
        failures.append("not uppercase")
    if style.max_sentences and count_sentences(text) > style.max_sentences:
        failures.append(f"over {style.max_sentences} sentences")
    return failures


def score_probes(engine, probes, asks, style, seed, temperature, kind: str = ""):
    """Ask probe i each of `asks[i]` (one reply per ask); per probe, its passes and failures.

    Returns (rows, replies). `kind` keeps each set's sampling seeds its own; the own probes
    (kind "") keep the seeds they always had, so their replies do not change.
    """
    rows, replies = [], []
    for i, probe in enumerate(probes):
        got = []
        for s, ask in enumerate(asks[i]):
            text = engine.reply(
                [{"role": "user", "content": ask}],
                temperature=temperature,
                seed=sample_seed(seed, f"{kind}:{i}" if kind else i, s),
            ).strip()
            got.append((ask, text, check_reply(text, probe, style)))
        passed = [t for _, t, why in got if not why]
        failures: dict[str, int] = {}
        for _, _, why in got:
            for w in why:
                failures[w] = failures.get(w, 0) + 1
        row = {
            "ask": probe.ask,
            "passed": len(passed),
            "samples": len(got),
            "pass_rate": len(passed) / len(got) if got else 0.0,
            "example": passed[0] if passed else (got[0][1] if got else ""),
            "failures": failures,
        }
        if kind == "perturbed":
            row["asked"] = [a for a, _, _ in got]
        rows.append(row)
        replies += [t for _, t, _ in got]
    return rows, replies


def score_offtopic(engine, persona, n: int, seed: int, temperature: float, vocabulary=None) -> dict:
    """`n` held-out off-topic prompts, one reply each, judged in character (apps/probes.py)."""
    results = []
    for i, ask in enumerate(offtopic_sample(n, seed)):
        text = engine.reply([{"role": "user", "content": ask}], temperature=temperature,
                            seed=sample_seed(seed, f"offtopic:{i}", 0)).strip()  # fmt: skip
        results.append({"ask": ask, "reply": text,
                        "failures": offtopic_failures(text, persona, vocabulary)})  # fmt: skip
    passed = sum(not r["failures"] for r in results)
    return {"samples": len(results), "passed": passed,
            "pass_rate": passed / len(results) if results else 0.0, "replies": results}  # fmt: skip


def pass_rate(rows: list[dict]) -> float:
    """Passed replies over all replies of a set of probe rows."""
    total = sum(r["samples"] for r in rows)
    return sum(r["passed"] for r in rows) / total if total else 0.0


def sample_seed(seed: int, probe: int | str, sample: int) -> int:
    """Each reply's own seed, from (seed, probe, sample) alone: adding a probe to the persona or
    asking for more samples leaves the replies already sampled unchanged."""
    digest = hashlib.sha256(f"{seed}:{probe}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch seed accepts it
