"""`guppyforge serve` under concurrent load: requests/s and latency, before and after batching.

    python bench/bench_serve.py                          # guppy-9m shape, random weights
    python bench/bench_serve.py --run runs/cat           # a trained run folder
    python bench/bench_serve.py --before /tmp/serve-before   # also the old server, from a
                                                         # checkout of it (git worktree add ...)
    python bench/bench_serve.py --levels 8               # 8 clients only

Each server runs in its own process on 127.0.0.1 (loopback only) and gets the same short chat
requests (`max_tokens` 32, sampled with a per-request seed) from 1, 8 and 32 client threads,
a new connection per request. Each level is bounded: at most `--requests` requests per client
thread and `--seconds` of sending. Random weights rarely emit the end token, so nearly every
reply is the full 32 tokens: the same work for both servers. Prints a table, then the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

PROMPTS = ["are you hungry", "hello", "where do you sleep", "what is your name"]
LEVELS = (1, 8, 32)
# Prints the port, then serves: works with the old server's make_server and the new one's.
LAUNCH = (
    "import sys, guppyforge; from guppyforge.model.run import load_run;"
    "from guppyforge.apps.serve import make_server;"
    "s = make_server(load_run(sys.argv[1]), '127.0.0.1', 0);"
    "print(s.server_address[1], guppyforge.__file__, flush=True); s.serve_forever()"
)


def random_run(folder: Path, preset: str = "guppy-9m") -> Path:
    """A run folder with random weights of `preset`'s shape and a tokenizer fit to the cat."""
    import torch

    from guppyforge.files import builtin_persona
    from guppyforge.model.gpt import GPT, PRESETS
    from guppyforge.model.tokenizer import format_chat, save_tokenizer, train_tokenizer
    from guppyforge.persona.conversations import Sampler
    from guppyforge.persona.schema import load_persona
    from guppyforge.train.run_folder import save_weights

    sampler = Sampler(load_persona(builtin_persona("cat")), 0)
    texts = [format_chat(sampler.conversation(i, 1, None).messages) for i in range(3000)]
    tok = train_tokenizer(texts, vocab_size=PRESETS[preset].vocab_size)
    cfg = replace(PRESETS[preset], vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(GPT(cfg), folder / "model.safetensors")
    save_tokenizer(tok, folder, cfg.context)
    config = {"model": cfg.to_dict(), "persona": {"name": "cat"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def start(code_dir: Path, run: Path) -> tuple[subprocess.Popen, int]:
    env = os.environ | {"PYTHONPATH": str(code_dir)}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(run)], env=env, cwd=code_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    port, where = proc.stdout.readline().split()
    assert str(code_dir) in where, f"imported {where}, not the code in {code_dir}"
    return proc, int(port)


def ask(port: int, i: int, model: str) -> tuple[float, int]:
    """One chat request; (seconds, completion tokens)."""
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": 32, "temperature": 0.8, "seed": i,
    })  # fmt: skip
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    assert response.status == 200, data
    return time.perf_counter() - t, data["usage"]["completion_tokens"]


def level(port: int, clients: int, per_client: int, seconds: float, model: str) -> dict:
    """`clients` threads sending requests back to back, each up to `per_client` of them."""
    latencies, tokens, lock = [], [0], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(c: int) -> None:
        for k in range(per_client):
            if time.perf_counter() > deadline:
                return
            dt, n = ask(port, c * per_client + k, model)
            with lock:
                latencies.append(dt)
                tokens[0] += n

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": q[9] * 1000,
            "p95": q[18] * 1000, "tok_s": tokens[0] / wall}  # fmt: skip


def bench(name: str, code_dir: Path, run: Path, args) -> dict[int, dict]:
    proc, port = start(code_dir, run)
    try:
        for i in range(2):
            ask(port, 10_000 + i, "cat")  # warm up: first forward passes, allocator
        rows = {}
        for clients in args.levels:
            per_client = max(args.requests // clients, 2)
            rows[clients] = r = level(port, clients, per_client, args.seconds, "cat")
            print(f"{name:7} {clients:>4} {r['requests']:>9} {r['rps']:>8.1f} {r['p50']:>8.0f} "
                  f"{r['p95']:>8.0f} {r['tok_s']:>8.0f}", flush=True)  # fmt: skip
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder (default: random guppy-9m weights)")
    parser.add_argument("--before", type=Path, help="a checkout of the server to compare with")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (about)")
    parser.add_argument("--seconds", type=float, default=60, help="sending time per level, max")
    parser.add_argument(
        "--levels", type=lambda s: [int(c) for c in s.split(",")], default=list(LEVELS),
        help="client threads per level, comma-separated (default: 1,8,32)",
    )  # fmt: skip
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or random_run(Path(tmp) / "run")
        if args.run:
            model = json.loads((run / "config.json").read_text()).get("persona", {}).get("name")
            assert model == "cat", "the bench asks for model 'cat'; use a run of the cat persona"
        print(f"{'server':7} {'conc':>4} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'tok/s':>8}")  # fmt: skip
        results = {}
        if args.before:
            results["before"] = bench("before", args.before.resolve(), run, args)
        results["after"] = bench("after", here, run, args)
    after, low = results["after"], args.levels[0]
    for name, rows in results.items():
        for c in args.levels[1:]:
            print(
                f"{name}: concurrency {c} / {low} = {rows[c]['rps'] / rows[low]['rps']:.1f}x requests/s"
            )
    if "before" in results:
        before = results["before"]
        for c in args.levels:
            b, a = before[c], after[c]
            print(f"after / before at {c:>2}: {a['rps'] / b['rps']:.1f}x requests/s, "
                  f"p50 {a['p50'] / b['p50']:.2f}x, p95 {a['p95'] / b['p95']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
