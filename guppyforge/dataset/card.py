"""The figures that describe a generated dataset, and its dataset card (README.md).

The same figures go to `stats.json` (for programs) and to the card (for people), so they are
computed once here. None of them depends on timing or on the number of workers: the same persona
and seed give the same stats.json, and a card that differs only in the command it quotes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence

from guppyforge import __version__
from guppyforge.dataset.split import prompt_key
from guppyforge.dataset.write import Row
from guppyforge.resources import templates_dir

CARD_TEMPLATE = "dataset_card.md.j2"


def fingerprint(splits: dict[str, Sequence[Row]]) -> str:
    """A sha256 over the rows' content, split by split, independent of the parquet encoding.

    It is the hex digest of the compact JSON of `{split: [[messages, topic, template_id,
    turns], ...]}` (messages as `[[role, content], ...]`), so anyone can recompute it from the
    loaded dataset without guppyforge. One `json.dumps` call keeps it fast on 60K rows.
    """
    payload = json.dumps(
        {name: rows for name, rows in splits.items()}, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def pair_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Rows per (ask template, say template), turn by turn: `"food/ask0@L57/say2@L63": 130`.

    A pair far above its topic's others shows a reply the walk favours; one missing shows a
    question that no reply answers. Hand-written examples are not pairs and are left out.
    """
    counts: Counter[str] = Counter()
    for _messages, topic, template_id, _turns in rows:
        parts = template_id.split("/")
        if parts[0] == "examples" or len(parts) < 3:
            continue
        for i in range(1, len(parts) - 1, 2):
            counts[f"{topic}/{parts[i]}/{parts[i + 1]}"] += 1
    return dict(sorted(counts.items()))


def diversity(rows: Sequence[Row]) -> dict[str, float | int]:
    """Variety figures of the character's replies (and how many distinct prompts there are).

    distinct-n is the number of distinct word n-grams divided by the number of n-grams, over all
    replies: the usual measure of how repetitive a text collection is (1.0: nothing repeats).
    """
    prompts = set()
    replies: Counter[str] = Counter()
    for messages, _topic, _template_id, _turns in rows:
        prompts.add(prompt_key(messages))
        replies.update(content for role, content in messages if role == "assistant")

    # Each distinct reply is split once and weighted by how often it occurs: the n-gram sets
    # only need distinct texts, the totals need every occurrence.
    unigrams: set[str] = set()
    bigrams: set[tuple[str, str]] = set()
    n_words = n_pairs = 0
    for reply, count in replies.items():
        words = reply.lower().split()
        unigrams.update(words)
        bigrams.update(zip(words, words[1:], strict=False))
        n_words += count * len(words)
        n_pairs += count * max(len(words) - 1, 0)
    n_replies = replies.total()
    return {
        "distinct_prompts": len(prompts),
        "distinct_replies": len(replies),
        "distinct_1": round(len(unigrams) / n_words, 4) if n_words else 0.0,
        "distinct_2": round(len(bigrams) / n_pairs, 4) if n_pairs else 0.0,
        "mean_reply_words": round(n_words / n_replies, 2) if n_replies else 0.0,
    }


def topic_counts(
    splits: dict[str, Sequence[Row]], weights: dict[str, float]
) -> dict[str, dict[str, float | int]]:
    """Rows per topic, per split, with the topic's weight from the persona, in persona order.

    Rows whose topic the persona does not list (a hand-written example without one) still count.
    """
    per_split = {name: Counter(row[1] for row in rows) for name, rows in splits.items()}
    names = list(weights) + sorted(
        {t for counts in per_split.values() for t in counts} - set(weights)
    )
    table: dict[str, dict[str, float | int]] = {}
    for topic in names:
        entry: dict[str, float | int] = {
            "weight": weights.get(topic, 0),
            "rows": sum(counts.get(topic, 0) for counts in per_split.values()),
        }
        for split, counts in per_split.items():
            entry[split] = counts.get(topic, 0)
        table[topic] = entry
    return table


def size_category(n: int) -> str:
    """The Hugging Face `size_categories` bucket for a number of rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]
    for limit, label in bounds:
        if n < limit:
            return label
    return "10M<n<100M"


def _md_cell(text: object) -> str:
    # A table cell must stay on one line, and a '|' would end the cell early.
    return str(text).replace("\n", " ").replace("|", "\\|")


def render_card(stats: dict, persona, command: str, files: dict[str, dict[str, int]]) -> str:
    """Render README.md from templates/dataset_card.md.j2.

    `files` maps each split to `{"num_bytes": arrow size, "file_bytes": parquet size}`. The YAML
    header is what `datasets.load_dataset(folder)` and the Hub read: `configs` names the parquet
    files of each split, `dataset_info` their features and sizes.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly, not as blank text
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML; YAML values go through |tojson instead
    )
    env.filters["md_cell"] = _md_cell
    tags = list(dict.fromkeys(["guppyforge", "synthetic", "persona", *(persona.tags or [])]))
    return env.get_template(CARD_TEMPLATE).render(
        stats=stats,
        persona=persona,
        license=persona.license or "unknown",
        language=persona.language or "en",
        tags=tags,
        size_category=size_category(stats["rows"]),
        pretty_name=f"{persona.display_name or persona.name}: a guppyforge persona dataset",
        files=files,
        command=command,
        version=__version__,
    )
