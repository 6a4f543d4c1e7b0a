"""`guppyforge eval`: how well a trained character stays in character.

Read in this order: the prompts eval asks beyond the persona's own probes (perturbed, blind,
off-topic) and how their replies are judged; then `evaluate_run`, which asks them all, measures
the test loss, and writes the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path

from guppyforge.dataset.folder import load_splits
from guppyforge.defaults import (
    EVAL_OFFTOPIC_SAMPLES,
    EVAL_SAMPLES,
    EVAL_TOPIC_SAMPLES,
    TEMPERATURE,
)
from guppyforge.errors import GuppyError
from guppyforge.evaluate.trace import load_index, words
from guppyforge.files import (
    EVAL_RESULT,
    EVAL_SCHEMA,
    builtin_persona,
    check_inputs,
    claim_file,
    cut,
    guard,
    personas_dir,
    text_table,
    write_atomic,
)
from guppyforge.model.engine import Engine
from guppyforge.model.packing import eval_loss, tokenize
from guppyforge.model.run import dataset_dir, load_run, pick_device
from guppyforge.persona.conversations import SENTENCE_END, pool
from guppyforge.persona.schema import Reader, load_persona
from guppyforge.persona.types import Persona, Probe, Variation
from guppyforge.persona.variation import Rng, Varier
from guppyforge.persona.yamlsafe import read_yaml

# --- The prompts `eval` asks beyond the persona's own probes, and how their replies are judged.
#
# - perturbed: the persona's own probes typed the way people type (persona/variation.py), one
#   variant per sample, so a model that learned the file's phrasings rather than the character
#   shows the gap;
# - blind: a probe file written by someone who never read the persona (`--probes FILE`; for a
#   built-in, personas/blind/NAME.yaml when it exists);
# - off-topic: a sample of the held-out part of the shipped pool (persona/conversations.py), which
#   generate never uses. A reply passes when it stays in character: no `never_say` phrase, no
#   chatbot phrase, the persona's style (case, sentence cap), and only words the character says
#   in its training replies (a model that falls apart on a strange prompt makes words up).

# The sentence ends `generate` cuts replies at (style.max_sentences), so both count alike.
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
        raise GuppyError(
            f"{doc.path}:1:1: probes: a probe file needs a `probes:` list. Write "
            "'- {ask: ..., expect_any: [...]}' items under it"
        )
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
    return [
        [varier.text(p.ask, Rng(seed, i, salt=2 + s)) for s in range(samples)]
        for i, p in enumerate(probes)
    ]


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
    ends = list(SENTENCE_END.finditer(text))
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


def ask_all(engine, prompts, seeds, temperature: float, strip: bool = True) -> list[str]:
    """One reply to each single-message prompt, `seeds[i]` seeding reply i, decoded together in
    one batch: eval asks hundreds of prompts, and a batch shares each forward pass."""
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    texts = engine.replies(conversations, seeds, temperature=temperature)
    return [t.strip() for t in texts] if strip else texts


def score_probes(engine, probes, asks, style, seed, temperature, kind: str = ""):
    """Ask probe i each of `asks[i]` (one reply per ask); per probe, its passes and failures.

    Returns (rows, replies). `kind` keeps each set's sampling seeds its own; the own probes
    (kind "") keep the seeds they always had, so their replies do not change.
    """
    keys = [(i, s) for i in range(len(probes)) for s in range(len(asks[i]))]
    texts = ask_all(
        engine,
        [asks[i][s] for i, s in keys],
        [sample_seed(seed, f"{kind}:{i}" if kind else i, s) for i, s in keys],
        temperature,
    )
    answered = dict(zip(keys, texts, strict=True))
    rows, replies = [], []
    for i, probe in enumerate(probes):
        got = []
        for s, ask in enumerate(asks[i]):
            text = answered[i, s]
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
    """`n` held-out off-topic prompts, one reply each, judged in character (above)."""
    prompts = offtopic_sample(n, seed)
    seeds = [sample_seed(seed, f"offtopic:{i}", 0) for i in range(len(prompts))]
    results = [
        {"ask": ask, "reply": text, "failures": offtopic_failures(text, persona, vocabulary)}
        for ask, text in zip(prompts, ask_all(engine, prompts, seeds, temperature), strict=True)
    ]
    passed = sum(not r["failures"] for r in results)
    return {
        "samples": len(results),
        "passed": passed,
        "pass_rate": passed / len(results) if results else 0.0,
        "replies": results,
    }


def pass_rate(rows: list[dict]) -> float:
    """Passed replies over all replies of a set of probe rows."""
    total = sum(r["samples"] for r in rows)
    return sum(r["passed"] for r in rows) / total if total else 0.0


def sample_seed(seed: int, probe: int | str, sample: int) -> int:
    """Each reply's own seed, from (seed, probe, sample) alone: adding a probe to the persona or
    asking for more samples leaves the replies already sampled unchanged."""
    digest = hashlib.sha256(f"{seed}:{probe}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch seed accepts it


# --- `guppyforge eval`: how well a trained character stays in character.
#
# - perplexity on the test split: how surprised the model is by replies it never trained on
#   (counted on the character's replies only, as training counts them);
# - probe pass rates, side by side (above): the persona's own probes, each asked `samples`
#   times (a reply passes when it says an expected word, says nothing forbidden, and keeps the
#   persona's style: case, sentence cap); the same probes typed the ways people type (the
#   persona's variation: rephrased, text-speak, typos...); a blind probe set written without
#   reading the persona; and held-out off-topic prompts, which pass when the reply stays in
#   character;
# - memorised rate: the share of sampled replies copied verbatim from the training replies (a
#   model can pass probes by reciting; this says how much of that it does);
# - distinct-2: unique word pairs over all word pairs in the sampled replies (1.0: never repeats
#   itself; near 0: says the same thing every time);
# - composition, per topic: replies to test prompts (phrasings never trained on) traced back to the
#   training data (evaluate/trace.py): verbatim, recombined (every span seen, never together) or novel,
#   so a user sees whether the model memorises or composes.


def distinct_2(replies: list[str]) -> float:
    """Unique word bigrams / all word bigrams (within each reply)."""
    pairs = [
        tuple(w[i : i + 2]) for r in replies if len(w := words(r)) > 1 for i in range(len(w) - 1)
    ]
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def evaluate_run(
    run_dir: str | Path,
    persona: str | Path | None = None,
    data: str | Path | None = None,
    samples: int = EVAL_SAMPLES,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    device: str = "cpu",
    topic_samples: int = EVAL_TOPIC_SAMPLES,
    probes: str | Path | None = None,
    offtopic_samples: int = EVAL_OFFTOPIC_SAMPLES,
    data_format: str | None = None,
) -> dict:
    """Score a run folder; the result is what `eval --json` writes.

    `probes`: a blind probe file (default: the built-in's personas/blind/NAME.yaml, if any);
    `offtopic_samples`: held-out off-topic prompts asked, one reply each; `data_format`: the
    shape of `data` when it is chat data of one's own (as `train --format`).
    """
    run = load_run(_existing(run_dir), device=device)
    persona_path = Path(persona) if persona else run.persona_path
    if not persona_path.is_file():
        raise GuppyError(f"{persona_path}: no persona file. Pass one with --persona FILE.")
    p = load_persona(persona_path)
    trained = (run.config.get("persona") or {}).get("name")
    if persona and trained and p.name != trained:  # a typo'd path scores another character
        print(
            f"warning: {persona_path} is '{p.name}', but {run.path} was trained on "
            f"'{trained}': its probes test another character",
            file=sys.stderr,
        )
    blind_path = Path(probes) if probes else blind_file(p)
    # A bad probe file fails before any reply is sampled.
    blind_probes = load_probe_file(blind_path, p) if blind_path is not None else ()
    data_dir = dataset_dir(run.path, run.config, data)
    recorded = (run.config.get("dataset") or {}).get("format") if data is None else None
    context = run.model.cfg.context
    # The shape and context train read the data with: the same rows kept, the same split made.
    splits = load_splits(data_dir, data_format or recorded, context)

    test = tokenize(splits["test"], run.tokenizer, context)
    loss, ppl = eval_loss(run.model, test, context, run.model.wte.weight.device)
    engine = Engine.from_run(run)
    seen = {
        m["content"].strip()
        for messages in splits["train"]["messages"]
        for m in messages
        if m["role"] == "assistant"
    }

    own = [[probe.ask] * samples for probe in p.probes]
    rows, replies = score_probes(engine, p.probes, own, p.style, seed, temperature)
    perturbed, _ = score_probes(
        engine,
        p.probes,
        perturbed_asks(p, p.probes, samples, seed),
        p.style,
        seed,
        temperature,
        "perturbed",
    )
    blind = None
    if blind_path is not None:
        asks = [[probe.ask] * samples for probe in blind_probes]
        blind_rows, _ = score_probes(
            engine, blind_probes, asks, p.style, seed, temperature, "blind"
        )
        blind = {"file": str(blind_path), "pass_rate": pass_rate(blind_rows), "probes": blind_rows}
    vocabulary = {w for reply in seen for w in words(reply)}
    offtopic = score_offtopic(engine, p, offtopic_samples, seed, temperature, vocabulary)

    total = sum(r["samples"] for r in rows)
    index = load_index(run.path, data, note=lambda _: None, data_format=data_format)
    composition = composition_by_topic(
        engine, index, splits["test"], topic_samples, seed, temperature
    )
    return {
        "run": str(run.path),
        "persona": str(persona_path),
        "data": str(data_dir),
        "samples": samples,
        "seed": seed,
        "temperature": temperature,
        "test_loss": loss,
        "perplexity": ppl,
        "probe_pass_rate": sum(r["passed"] for r in rows) / total if total else 0.0,
        "perturbed_pass_rate": pass_rate(perturbed),
        "blind_pass_rate": blind["pass_rate"] if blind else None,
        "offtopic_pass_rate": offtopic["pass_rate"],
        "memorized_rate": sum(t in seen for t in replies) / len(replies) if replies else 0.0,
        "distinct_2": distinct_2(replies),
        "probes": rows,
        "perturbed": perturbed,
        "blind": blind,
        "offtopic": offtopic,
        "composition": composition,
    }


def composition_by_topic(engine, index, test, per_topic: int, seed: int, temperature: float):
    """Per topic: the share of replies to its first `per_topic` test prompts that are verbatim,
    recombined or novel (see evaluate/trace.py). The test prompts are phrasings never trained on."""
    columns = [c for c in ("messages", "topic") if c in test.column_names]
    rows = test.select_columns(columns).to_dict()
    asks: dict[str, list[str]] = {}
    for i, messages in enumerate(rows["messages"]):
        mine = asks.setdefault(rows["topic"][i] if "topic" in rows else "all", [])
        if len(mine) < per_topic:
            mine.append(messages[0]["content"])
    out = {}
    for topic in sorted(t for t, mine in asks.items() if mine):
        seeds = [sample_seed(seed, f"topic:{topic}", s) for s in range(len(asks[topic]))]
        texts = ask_all(engine, asks[topic], seeds, temperature, strip=False)
        kinds = [index.trace(text).kind for text in texts]
        out[topic] = {"replies": len(kinds)} | {k: kinds.count(k) / len(kinds) for k in KINDS}
    return out


def _existing(run_dir: str | Path) -> Path:
    if not Path(run_dir).is_dir():
        raise GuppyError(f"{run_dir}: no such run folder. Train one with `guppyforge train`.")
    return Path(run_dir)


def format_report(result: dict) -> str:
    """The readable table `guppyforge eval` prints."""
    rows = result["probes"]
    lines = [
        f"{len(rows)} probes x {result['samples']} samples, temperature {result['temperature']:g}, "
        f"seed {result['seed']}",
        "",
    ]
    table = [("ask", "pass", "example reply")]
    for r in rows:
        why = "" if r["passed"] else f"  [{', '.join(r['failures'])}]"
        table.append(
            (
                cut(r["ask"], 34),
                f"{r['passed']}/{r['samples']}",
                f"{cut(r['example'], 60)!r}{why}",
            )
        )
    lines.append(text_table(table, indent="  ", align="lrl") if rows else "")
    if not rows:
        lines.append("  (the persona has no probes: add some under `probes:` to score replies)")
    lines += (
        [""]
        + _rates(result)
        + [
            "",
            f"perplexity       {result['perplexity']:7.2f}  (test split, replies only; loss {result['test_loss']:.3f})",
            f"memorised        {result['memorized_rate']:7.1%}  (sampled replies found verbatim in train)",
            f"distinct-2       {result['distinct_2']:7.3f}  (unique word pairs / all word pairs)",
        ]
    )
    return "\n".join(lines + _composition(result.get("composition") or {}))


KINDS = ("verbatim", "recombined", "novel")


def _rates(result: dict) -> list[str]:
    """The four pass rates: own probes, perturbed, blind, off-topic."""

    def count(rows):
        return f"{sum(r['passed'] for r in rows)}/{sum(r['samples'] for r in rows)}"

    perturbed, blind, off = result["perturbed"], result["blind"], result["offtopic"]
    lines = [
        "pass rates (own probes, then prompts the persona file never wrote):",
        f"  own probes     {result['probe_pass_rate']:7.1%}  ({count(result['probes'])} replies)",
        f"  perturbed      {result['perturbed_pass_rate']:7.1%}  ({count(perturbed)}: the same "
        "probes typed the ways people type)",
    ]
    if blind:
        lines.append(
            f"  blind          {blind['pass_rate']:7.1%}  ({count(blind['probes'])}: "
            f"{len(blind['probes'])} probes of {blind['file']})"
        )
    else:
        lines.append("  blind             none  (no blind probe set: pass --probes FILE)")
    lines.append(
        f"  off-topic      {off['pass_rate']:7.1%}  ({off['passed']}/{off['samples']} "
        "held-out prompts answered in character)"
    )
    missed = [r for r in off["replies"] if r["failures"]][:2]
    lines += [
        f"    missed: {cut(r['ask'], 30)!r} -> {cut(r['reply'], 44)!r} [{', '.join(r['failures'])}]"
        for r in missed
    ]
    return lines


def _composition(topics: dict) -> list[str]:
    """Per topic, how the replies to unseen test prompts relate to the training replies."""
    if not topics:
        return []
    table = [("topic", "replies", *KINDS)]
    for name, c in topics.items():
        table.append((name, c["replies"], *(f"{c[k]:.0%}" for k in KINDS)))
    n = sum(c["replies"] for c in topics.values())
    table.append(
        ("all", n, *(f"{sum(c[k] * c['replies'] for c in topics.values()) / n:.0%}" for k in KINDS))
    )
    return [
        "",
        "where replies to unseen test prompts come from (`guppyforge why RUN REPLY` shows one):",
        "verbatim = a training reply; recombined = every 3-word span seen, never together;",
        "novel = some words in no training reply",
        text_table(table, indent="  "),
    ]


def run_eval(
    run_dir, json_path: str | None, min_pass: float | None, force: bool = False, **options
) -> None:
    """`guppyforge eval`: print the table, write --json, and honour --min-pass."""
    if json_path:  # refused before the work, and the run folder is an input like any other
        claim_file(
            json_path,
            EVAL_RESULT,
            force,
            hint="Add --force to replace it, or pick --json",
            elsewhere="Pick another --json, or move the file away",
        )
        check_inputs(Path(json_path), [run_dir])
    options["device"] = str(pick_device(options.get("device") or "auto"))
    result = evaluate_run(run_dir, **options)
    print(format_report(result))
    if json_path:
        # The schema id is what lets a later `--json FILE --force` know the file is ours.
        text = json.dumps({"schema": EVAL_SCHEMA, **result}, indent=2, ensure_ascii=False) + "\n"
        guard(Path(json_path), lambda: write_atomic(json_path, text))
        print(f"wrote {json_path}")
    if min_pass is not None and result["probe_pass_rate"] < min_pass:
        print(
            f"FAIL: probe pass rate {result['probe_pass_rate']:.3f} is below --min-pass {min_pass:g}",
            file=sys.stderr,
        )
        raise SystemExit(1)
