"""`guppyforge eval`: how well a trained character stays in character.

- perplexity on the test split: how surprised the model is by replies it never trained on
  (counted on the character's replies only, as training counts them);
- probe pass rates, side by side (apps/probes.py): the persona's own probes, each asked `samples`
  times (a reply passes when it says an expected word, says nothing forbidden, and keeps the
  persona's style: case, sentence cap); the same probes perturbed (typos, casing, fillers); a
  blind probe set written without reading the persona; and held-out off-topic prompts, which
  pass when the reply stays in character;
- memorised rate: the share of sampled replies copied verbatim from the training replies (a
  model can pass probes by reciting; this says how much of that it does);
- distinct-2: unique word pairs over all word pairs in the sampled replies (1.0: never repeats
  itself; near 0: says the same thing every time);
- composition, per topic: replies to test prompts (phrasings never trained on) traced back to the
  training data (apps/trace.py): verbatim, recombined (every span seen, never together) or novel,
  so a user sees whether the model memorises or composes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from guppyforge.apps.probes import (  # noqa: F401  (check_reply & co: the judges, re-exported)
    blind_file,
    check_reply,
    count_sentences,
    has_phrase,
    load_probe_file,
    pass_rate,
    perturbed_asks,
    sample_seed,
    score_offtopic,
    score_probes,
    style_failures,
)
from guppyforge.apps.trace import words
from guppyforge.apps.trace_store import load_index
from guppyforge.dataset.read import load_splits
from guppyforge.defaults import TEMPERATURE
from guppyforge.errors import GuppyError
from guppyforge.files import text_table, write_atomic
from guppyforge.model.engine import Engine
from guppyforge.model.packing import eval_loss, tokenize
from guppyforge.model.run import dataset_dir, load_run, pick_device
from guppyforge.ownership import EVAL_SCHEMA, check_inputs, claim_file, guard
from guppyforge.persona.load import load_persona


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
    probes: str | Path | None = None,
    offtopic_samples: int = 20,
) -> dict:
    """Score a run folder; the result is what `eval --json` writes.

    `probes`: a blind probe file (default: the built-in's personas/blind/NAME.yaml, if any);
    `offtopic_samples`: held-out off-topic prompts asked, one reply each.
    """
    run = load_run(_existing(run_dir), device=device)
    persona_path = Path(persona) if persona else run.persona_path
    if not persona_path.is_file():
        raise GuppyError(f"{persona_path}: no persona file. Pass one with --persona FILE.")
    p = load_persona(persona_path)
    trained = (run.config.get("persona") or {}).get("name")
    if persona and trained and p.name != trained:  # a typo'd path scores another character
        print(f"warning: {persona_path} is '{p.name}', but {run.path} was trained on "
              f"'{trained}': its probes test another character", file=sys.stderr)  # fmt: skip
    blind_path = Path(probes) if probes else blind_file(p)
    # A bad probe file fails before any reply is sampled.
    blind_probes = load_probe_file(blind_path, p) if blind_path is not None else ()
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

    own = [[probe.ask] * samples for probe in p.probes]
    rows, replies = score_probes(engine, p.probes, own, p.style, seed, temperature)
    perturbed, _ = score_probes(engine, p.probes, perturbed_asks(p, p.probes, samples, seed),
                                p.style, seed, temperature, "perturbed")  # fmt: skip
    blind = None
    if blind_path is not None:
        asks = [[probe.ask] * samples for probe in blind_probes]
        blind_rows, _ = score_probes(engine, blind_probes, asks, p.style, seed, temperature,
                                     "blind")  # fmt: skip
        blind = {"file": str(blind_path), "pass_rate": pass_rate(blind_rows), "probes": blind_rows}
    vocabulary = {w for reply in seen for w in words(reply)}
    offtopic = score_offtopic(engine, p, offtopic_samples, seed, temperature, vocabulary)

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
                                     seed=sample_seed(seed, f"topic:{topic}", s))).kind
            for s, ask in enumerate(asks[topic])
        ]  # fmt: skip
        out[topic] = {"replies": len(kinds)} | {k: kinds.count(k) / len(kinds) for k in KINDS}
    return out


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
        "probes with typos, casing, fillers)",
    ]
    if blind:
        lines.append(f"  blind          {blind['pass_rate']:7.1%}  ({count(blind['probes'])}: "
                     f"{len(blind['probes'])} probes of {blind['file']})")  # fmt: skip
    else:
        lines.append("  blind             none  (no blind probe set: pass --probes FILE)")
    lines.append(f"  off-topic      {off['pass_rate']:7.1%}  ({off['passed']}/{off['samples']} "
                 "held-out prompts answered in character)")  # fmt: skip
    missed = [r for r in off["replies"] if r["failures"]][:2]
    lines += [f"    missed: {_cut(r['ask'], 30)!r} -> {_cut(r['reply'], 44)!r} "
              f"[{', '.join(r['failures'])}]" for r in missed]  # fmt: skip
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
