"""Shared fixtures. Each is a clearly named function; add yours below, don't rewrite others'."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import pytest

# --- micro_run: a tiny trained run folder, built without the trainer (chat, eval, serve, export) -

MICRO_PERSONA = """\
guppyforge: 1
name: finn
display_name: Finn
summary: A tiny fish for tests.
license: mit
style:
  case: lower
  max_sentences: 4  # "worms? yes. always yes. i eat it." is four
  never_say: [as an ai]
grammar:
  food: [worms, flakes, bugs]
topics:
  food:
    ask: ["are you hungry", "do you like {{ food }}"]
    say: ["{{ food }}? yes. always yes."]
probes:
  - ask: are you hungry
    expect_any: [food, worms, flakes, bugs]
  - ask: what is the meaning of life
    expect_any: [food]
    forbid: [meaning]
"""

_FOODS = ["worms", "flakes", "bugs", "shrimp"]
_PLACES = ["the castle", "the plant", "the glass", "the rock"]


def micro_conversations(split: str) -> list[list[dict]]:
    """Fish conversations; the test split asks with phrasings the train split never uses."""
    asks = (
        ["are you hungry", "do you like {f}", "what do you eat", "hello", "where do you sleep"]
        if split == "train"
        else ["hungry?", "is {f} good", "hi there"]
    )
    out = []
    for i, ask in enumerate(asks):
        for j, food in enumerate(_FOODS):
            place = _PLACES[(i + j) % len(_PLACES)]
            say = {
                "hello": f"hi. is it food time. i was near {place}.",
                "where do you sleep": f"behind {place}. it is quiet.",
                "hi there": f"hi. i was near {place}.",
            }.get(ask, f"{food}? yes. always yes. i eat it near {place}.")
            conv = [{"role": "user", "content": ask.format(f=food)}]
            conv.append({"role": "assistant", "content": say})
            if split == "train" and j % 2:
                conv += [
                    {"role": "user", "content": "and then?"},
                    {"role": "assistant", "content": f"a nap near {place}."},
                ]
            out.append(conv)
    return out


def build_micro_run(root: Path, steps: int = 120) -> Path:
    """A run folder in `train/run_folder.py`'s layout, trained for a few seconds so replies say something.

    Writes ROOT/data (a dataset folder: data/{train,test}-*.parquet + persona.yaml) and ROOT/run
    (config.json, model.safetensors, tokenizer files, persona.yaml). Seeded: same bytes each time.
    """
    from dataclasses import replace

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from guppyforge.model.gpt import GPT, PRESETS
    from guppyforge.model.tokenizer import (
        encode_conversations,
        format_chat,
        save_tokenizer,
        train_tokenizer,
    )
    from guppyforge.train.run_folder import save_weights

    data_dir, run_dir = root / "data", root / "run"
    (data_dir / "data").mkdir(parents=True)
    run_dir.mkdir()
    splits = {s: micro_conversations(s) for s in ("train", "test")}
    for name, convs in splits.items():
        table = pa.table(
            {
                "messages": convs,
                "topic": ["food"] * len(convs),
                "template_id": ["food/ask0/say0"] * len(convs),
                "turns": [len(c) // 2 for c in convs],
            }
        )
        pq.write_table(table, data_dir / "data" / f"{name}-00000-of-00001.parquet")
    for folder in (data_dir, run_dir):
        (folder / "persona.yaml").write_text(MICRO_PERSONA)

    tok = train_tokenizer((format_chat(c) for c in splits["train"]), vocab_size=512)
    cfg = replace(PRESETS["micro"], vocab_size=tok.get_vocab_size())
    ids, mask = encode_conversations(tok, splits["train"])
    T = max(map(len, ids))
    x = torch.zeros(len(ids), T, dtype=torch.long)
    y = torch.full((len(ids), T), -100, dtype=torch.long)
    for r, (seq, m) in enumerate(zip(ids, mask, strict=True)):
        x[r, : len(seq)] = torch.tensor(seq)
        # Loss on the replies only, as `train` does: position t predicts token t+1.
        y[r, : len(seq) - 1] = torch.tensor(
            [t if k else -100 for t, k in zip(seq[1:], m[1:], strict=True)]
        )
    threads = torch.get_num_threads()
    # One thread: on a shared 2-core box, two threads per process fight other processes and
    # run this small model several times slower.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():  # never disturb the global RNG other tests rely on
            torch.manual_seed(0)
            model = GPT(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            for _ in range(steps):
                loss = F.cross_entropy(model(x).view(-1, cfg.vocab_size), y.view(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_weights(model, run_dir / "model.safetensors")
    save_tokenizer(tok, run_dir, cfg.context)
    config = {
        "model": cfg.to_dict(),
        "train": {"steps": steps, "loss_on": "replies", "final_loss": loss.item()},
        "dataset": {"path": str(data_dir.resolve()), "fingerprint": "micro-0001"},
        "persona": {"name": "finn", "sha256": hashlib.sha256(MICRO_PERSONA.encode()).hexdigest()},
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """Path of a tiny trained run folder (micro preset, ~2 s to build). Treat it as read-only."""
    return build_micro_run(tmp_path_factory.mktemp("micro"))


# --- persona engine: tiny persona files (test_persona*.py, test_sampling.py, test_cli_persona.py) -

PERSONA_MOCHI = """\
guppyforge: 1.1
name: mochi
display_name: Mochi
summary: A house cat for tests.
style: {case: lower, max_sentences: 2, never_say: [as an ai]}
grammar:
  food: [tuna, kibble, {text: the forbidden butter, weight: 0.5}]
  spot: [the sofa, "the top of the {{ furniture }}"]
  furniture: [fridge, wardrobe]
topics:
  food:
    weight: 2
    ask:
      - are you hungry
      - "do you want some {{ food }}"
    say:
      - "{{ food }}? finally. i was wasting away on {{ spot }}"
      - "i only eat {{ food }}."
      - "always. feed me now."
    follow_ups:
      - ask: ["and after the {{ food }}?"]
        say: ["a nap on {{ spot }}. the {{ food }} made me sleepy."]
  hello:
    ask: [hi, hello]
    say: ["Hello. I Am Busy."]
examples:
  - topic: food
    turns:
      - {user: what do you like, assistant: tuna. mostly tuna.}
probes:
  - {ask: are you hungry, expect_any: [tuna]}
"""


@pytest.fixture
def write_persona_file(tmp_path):
    """Write persona text (str or bytes) to a file under tmp_path and return its path."""

    def write(text: str | bytes, name: str = "p.yaml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def mochi_file(write_persona_file) -> Path:
    """A small valid persona: two topics, nested grammar, a follow-up, an example."""
    return write_persona_file(PERSONA_MOCHI, "mochi.yaml")


# --- bounded_work: a bound on how much work code does, where a test would otherwise time it ----


@contextlib.contextmanager
def bounded_work(calls: int):
    """Fail once the code inside makes more than `calls` function calls (Python and C, this
    thread): the same count on an idle machine and a busy one, unlike the seconds it takes, and
    a runaway loop is stopped at the bound instead of hanging the suite. Yields [count so far]."""
    count = [0]

    def profile(frame, event, arg) -> None:
        if event in ("call", "c_call"):
            count[0] += 1
            if count[0] > calls:
                sys.setprofile(None)
                raise AssertionError(f"more than {calls:,} function calls: unbounded work")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(previous)


# --- wait_for: poll a condition with a deadline, where a test would otherwise sleep ------------


def wait_for(condition, what: str, seconds: float = 30.0, every: float = 0.02):
    """Poll `condition()` until it is truthy and return that; fail naming `what` after
    `seconds`, a deadline far past the usual wait so a busy machine only takes longer."""
    import time

    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(every)  # the poll's interval: what is awaited happens in another process
    return value


def cat_run(micro_run: Path, folder: Path):
    """The micro run with the built-in cat persona beside it (a persona with a greeting), loaded."""
    import shutil

    from guppyforge.files import builtin_persona
    from guppyforge.model.run import load_run

    shutil.copytree(micro_run, folder)
    shutil.copy(builtin_persona("cat"), folder / "persona.yaml")
    return load_run(folder)


@contextlib.contextmanager
def serving(run, **options):
    """A server for `run` on a free loopback port, answering from a thread for the `with` block."""
    import threading

    from guppyforge.apps.serve import make_server

    srv = make_server(run, "127.0.0.1", 0, **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
