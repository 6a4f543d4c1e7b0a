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
import random
from pathlib import Path

from guppyforge.apps.trace import words
from guppyforge.persona.offtopic import pool
from guppyforge.persona.schema import read_probes
from guppyforge.persona.types import Persona, Probe, Variation
from guppyforge.persona.variation import Rng, Varier
from guppyforge.persona.yamlsafe import read_yaml
from guppyforge.resources import builtin_persona, personas_dir

# What breaks character whatever the persona says: a model that learned chatbot talk.
CHATBOT_PHRASES = ("as an ai", "language model", "assistant")


def blind_file(persona: Persona) -> Path | None:
    """The blind probe set shipped for a built-in persona of this name, if there is one."""
    if builtin_persona(persona.name) is None:
        return None
    path = personas_dir() / "blind" / f"{persona.name}.yaml"
    return path if path.is_file() else None


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


def offtopic_failures(
    text: str, persona: Persona, check_style, vocabulary: set[str] | None = None
) -> list[str]:
    """Why a reply to an off-topic prompt breaks character (an empty list: it stays in it).

    `vocabulary`: the words of the training replies; a reply with any other word fails.
    """
    low = text.casefold()
    failures = [] if text.strip() else ["empty reply"]
    failures += [f"says '{p}'" for p in (*persona.style.never_say, *CHATBOT_PHRASES) if p in low]
    failures += check_style(text, persona.style)
    unknown = [w for w in words(text) if vocabulary is not None and w not in vocabulary]
    if unknown:
        failures.append(f"words never in its training replies: {', '.join(unknown[:3])}")
    return list(dict.fromkeys(failures))
