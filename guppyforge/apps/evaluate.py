"""`guppyforge eval`: how well a trained character stays in character, in four figures.

- perplexity on the test split: how surprised the model is by replies it never trained on
  (counted on the character's replies only, as training counts them);
- probe pass rate: the persona's probes, each asked `samples` times; a reply passes when it says
  an expected word, says nothing forbidden, and keeps the persona's style (case, sentence cap);
- memorised rate: the share of sampled replies copied verbatim from the training replies (a
  model can pass probes by reciting; this says how much of that it does);
- distinct-2: unique word pairs over all word pairs in the sampled replies (1.0: never repeats
  itself; near 0: says the same thing every time);
- composition, per topic: replies to test prompts (phrasings never trained on) traced back to the
  training data (apps/trace.py): verbatim, recombined (every span seen, never together) or novel,
  so a user sees whether the model memorises or composes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from guppyforge.apps.trace import words
from guppyforge.apps.trace_store import load_index
from guppyforge.dataset.read import load_splits
from guppyforge.defaults import TEMPERATURE
from guppyforge.errors import GuppyError
from guppyforge.files import text_table, write_atomic
from guppyforge.model.batches import eval_loss, tokenize
from guppyforge.model.engine import Engine
from guppyforge.model.run import dataset_dir, load_run, pick_device
from guppyforge.ownership import EVAL_SCHEMA, check_inputs, claim_file, guard
from guppyforge.persona.load import load_persona

# The sentence ends `generate` cuts replies at (style.max_sentences), so both count alike.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")


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
    if style.case == "lower" and text != text.lower():
        failures.append("not lowercase")
    if style.case == "upper" and text != text.upper():
        failures.append("not uppercase")
    if style.max_sentences and count_sentences(text) > style.max_sentences:
        failures.append(f"over {style.max_sentences} sentences")
    return list(dict.fromkeys(failures))  # probe.forbid may already hold never_say


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
    samples: int = 5,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    device: str = "cpu",
    topic_samples: int = 2,
) -> dict:
    """Score a run folder; the result is what `eval --json` writes."""
    run = load_run(_existing(run_dir), device=device)
    persona_path = Path(persona) if persona else run.persona_path
    if not persona_path.is_file():
        raise GuppyError(f"{persona_path}: no persona file. Pass one with --persona FILE.")
    p = load_persona(persona_path)
    trained = (run.config.get("persona") or {}).get("name")
    if persona and trained and p.name != trained:  # a typo'd path scores another character
        print(f"warning: {persona_path} is '{p.name}', but {run.path} was trained on "
              f"'{trained}': its probes test another character", file=sys.stderr)  # fmt: skip
    data_dir = dataset_dir(run.path, run.config, data)
    recorded = (run.config.get("dataset") or {}).get("format") if data is None else None
    splits = load_splits(data_dir, recorded)  # the shape train recognised, for its own data

    context = run.model.cfg.context
    test = tokenize(splits["test"], run.tokenizer, context)
    loss, ppl = eval_loss(run.model, test, context, run.model.wte.weight.device)
    engine = Engine.from_run(run)
    seen = {
        m["content"].strip()
        for messages in splits["train"]["messages"]
        for m in messages
        if m["role"] == "assistant"
    }

    rows, replies = [], []
    for i, probe in enumerate(p.probes):
        got = []
        for s in range(samples):
            text = engine.reply(
                [{"role": "user", "content": probe.ask}],
                temperature=temperature,
                seed=_sample_seed(seed, i, s),
            ).strip()
            got.append((text, check_reply(text, probe, p.style)))
        passed = [t for t, why in got if not why]
        failures: dict[str, int] = {}
        for _, why in got:
            for w in why:
                failures[w] = failures.get(w, 0) + 1
        rows.append(
            {
                "ask": probe.ask,
                "passed": len(passed),
                "samples": samples,
                "pass_rate": len(passed) / samples if samples else 0.0,
                "example": passed[0] if passed else (got[0][0] if got else ""),
                "failures": failures,
            }
        )
        replies += [t for t, _ in got]

    total = sum(r["samples"] for r in rows)
    index = load_index(run.path, data, note=lambda _: None)
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
        "memorized_rate": sum(t in seen for t in replies) / len(replies) if replies else 0.0,
        "distinct_2": distinct_2(replies),
        "probes": rows,
        "composition": composition,
    }


def composition_by_topic(engine, index, test, per_topic: int, seed: int, temperature: float):
    """Per topic: the share of replies to its first `per_topic` test prompts that are verbatim,
    recombined or novel (see apps/trace.py). The test prompts are phrasings never trained on."""
    columns = [c for c in ("messages", "topic") if c in test.column_names]
    rows = test.select_columns(columns).to_dict()
    asks: dict[str, list[str]] = {}
    for i, messages in enumerate(rows["messages"]):
        mine = asks.setdefault(rows["topic"][i] if "topic" in rows else "all", [])
        if len(mine) < per_topic:
            mine.append(messages[0]["content"])
    out = {}
    for topic in sorted(t for t, mine in asks.items() if mine):
        kinds = [
            index.trace(engine.reply([{"role": "user", "content": ask}], temperature=temperature,
                                     seed=_sample_seed(seed, f"topic:{topic}", s))).kind
            for s, ask in enumerate(asks[topic])
        ]  # fmt: skip
        out[topic] = {"replies": len(kinds)} | {k: kinds.count(k) / len(kinds) for k in KINDS}
    return out


def _sample_seed(seed: int, probe: int | str, sample: int) -> int:
    """Each reply's own seed, from (seed, probe, sample) alone: adding a probe to the persona or
    asking for more samples leaves the replies already sampled unchanged."""
    digest = hashlib.sha256(f"{seed}:{probe}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch seed accepts it


def _existing(run_dir: str | Path) -> Path:
    if not Path(run_dir).is_dir():
        raise GuppyError(f"{run_dir}: no such run folder. Train one with `guppyforge train`.")
    return Path(run_dir)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
                _cut(r["ask"], 34),
                f"{r['passed']}/{r['samples']}",
                f"{_cut(r['example'], 60)!r}{why}",
            )
        )
    lines.append(text_table(table, indent="  ", align="lrl") if rows else "")
    if not rows:
        lines.append("  (the persona has no probes: add some under `probes:` to score replies)")
    passed = sum(r["passed"] for r in rows)
    total = sum(r["samples"] for r in rows)
    lines += [
        "",
        f"probe pass rate  {result['probe_pass_rate']:7.1%}  ({passed}/{total} replies)",
        f"perplexity       {result['perplexity']:7.2f}  (test split, replies only; loss {result['test_loss']:.3f})",
        f"memorised        {result['memorized_rate']:7.1%}  (sampled replies found verbatim in train)",
        f"distinct-2       {result['distinct_2']:7.3f}  (unique word pairs / all word pairs)",
    ]
    return "\n".join(lines + _composition(result.get("composition") or {}))


KINDS = ("verbatim", "recombined", "novel")


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
        claim_file(json_path, "eval", force, hint="Add --force to replace it, or pick --json",
                   elsewhere="Pick another --json, or move the file away")  # fmt: skip
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
