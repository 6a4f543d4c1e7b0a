"""serve's `logprobs` and `top_logprobs`, through the `openai` client, and the page's /inside.

The numbers are what the engine computes: log_softmax of the logits each token was drawn from,
at temperature 1, before sampling's temperature and top-k change anything (as OpenAI's are).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from conftest import serving

from guppyforge.model.engine import Engine
from guppyforge.model.run import load_run
from guppyforge.model.tokenizer import token_bytes

HUNGRY = [{"role": "user", "content": "are you hungry"}]
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def run(micro_run):
    return load_run(Path(micro_run))


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def engine(run):
    return Engine.from_run(run)


def engine_logprobs(engine, messages, **options):
    """(token, log_softmax of its logits) for each token of the engine's own reply."""
    seen = []

    def keep(token, logits):
        seen.append((token, torch.log_softmax(logits.float(), -1)))

    text = engine.stream(messages, temperature=0, on_token=keep, **options).text()
    return text, seen


def check_tokens(content, seen, tokenizer, k, tol=1e-5):
    assert len(content) == len(seen)
    for entry, (token, logp) in zip(content, seen, strict=True):
        assert entry.bytes == list(token_bytes(tokenizer, token))
        assert entry.token == tokenizer.decode([token])
        assert abs(entry.logprob - float(logp[token])) <= tol
        values, ids = torch.topk(logp, k)
        assert [t.bytes for t in entry.top_logprobs] == [
            list(token_bytes(tokenizer, i)) for i in ids.tolist()
        ]
        assert (
            max(
                abs(t.logprob - v) for t, v in zip(entry.top_logprobs, values.tolist(), strict=True)
            )
            <= tol
        )
        if entry.top_logprobs:  # greedy: what was drawn is the likeliest
            assert entry.top_logprobs[0].bytes == entry.bytes


def test_chat_logprobs_of_a_greedy_reply_are_the_engines(client, engine):
    text, seen = engine_logprobs(engine, HUNGRY)
    r = client.chat.completions.create(
        model="finn", messages=HUNGRY, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = r.choices[0]
    assert choice.message.content == text
    check_tokens(choice.logprobs.content, seen, engine.tokenizer, 5)
    assert b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode() == text


def test_streamed_chat_logprobs_come_with_their_pieces(client, engine):
    text, seen = engine_logprobs(engine, HUNGRY)
    stream = client.chat.completions.create(
        model="finn", messages=HUNGRY, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    content, pieces = [], []
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
            # Each piece of text arrives with the tokens that wrote it.
            tokens = choice.logprobs.content
            assert b"".join(bytes(t.bytes) for t in tokens).decode() == choice.delta.content
            content += tokens
    assert "".join(pieces) == text
    check_tokens(content, seen, engine.tokenizer, 2)


def test_logprobs_at_temperature_1_whatever_the_sampling(client, engine):
    """Sampled at T=0.5 and top-k 3, a token's logprob is still the T=1 log-softmax."""
    r = client.chat.completions.create(
        model="finn",
        messages=HUNGRY,
        temperature=0.5,
        seed=7,
        logprobs=True,
        top_logprobs=4,
        extra_body={"top_k": 3},
    )
    content = r.choices[0].logprobs.content
    ids = engine.tokenizer.encode(r.choices[0].message.content, add_special_tokens=False).ids
    inside = engine.inside(HUNGRY, ids)
    assert [e.token for e in content] == [engine.tokenizer.decode([t.token]) for t in inside.tokens]
    for entry, t in zip(content, inside.tokens, strict=True):
        # inside.py runs the whole reply in one pass: equal to the decoder's up to rounding.
        assert entry.logprob == pytest.approx(t.logprob, abs=1e-4)
        assert len(entry.top_logprobs) == 4


def test_without_logprobs_there_are_none(client):
    r = client.chat.completions.create(model="finn", messages=HUNGRY, temperature=0)
    assert r.choices[0].logprobs is None
    r = client.chat.completions.create(model="finn", messages=HUNGRY, temperature=0, logprobs=True)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)


def test_batched_replies_keep_their_own_logprobs(client, engine):
    """Two requests decoded in one batch: each gets its own reply's numbers."""
    expected = {m[0]["content"]: engine_logprobs(engine, m) for m in (HUNGRY, HELLO)}

    def ask(messages):
        return client.chat.completions.create(
            model="finn", messages=messages, temperature=0, logprobs=True, top_logprobs=3
        )

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, [HUNGRY, HELLO, HUNGRY, HELLO]))
    for messages, r in zip([HUNGRY, HELLO, HUNGRY, HELLO], replies, strict=True):
        text, seen = expected[messages[0]["content"]]
        assert r.choices[0].message.content == text
        # Rows of one batch may differ from a batch of one by float rounding.
        check_tokens(r.choices[0].logprobs.content, seen, engine.tokenizer, 3, tol=1e-4)


def test_completions_logprobs_in_the_legacy_shape(client, engine):
    prompt = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(
        model="finn", prompt=prompt, temperature=0, logprobs=3, max_tokens=6
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    ids = engine.prompt_text(prompt)
    seen = []
    keep = lambda t, z: seen.append((t, torch.log_softmax(z, -1)))  # noqa: E731
    list(engine.tokens(ids, temperature=0, max_new_tokens=6, on_token=keep))
    assert lp.tokens == [engine.tokenizer.decode([t]) for t, _ in seen]
    for logprob, top, (token, logp) in zip(lp.token_logprobs, lp.top_logprobs, seen, strict=True):
        assert abs(logprob - float(logp[token])) <= 1e-5
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob, abs=1e-6)
    stream = client.completions.create(
        model="finn", prompt=prompt, temperature=0, logprobs=1, max_tokens=6, stream=True
    )
    tokens = [
        t
        for c in stream
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.tokens
    ]
    assert tokens == lp.tokens


@pytest.mark.parametrize(
    "kind, args, param",
    [
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logprobs": 1}, "logprobs"),
        ("text", {"logprobs": 6}, "logprobs"),
        ("text", {"logprobs": True}, "logprobs"),
    ],
)
def test_logprobs_out_of_range_are_a_400_in_openais_shape(client, kind, args, param):
    with pytest.raises(openai.BadRequestError) as err:
        if kind == "chat":
            client.chat.completions.create(model="finn", messages=HUNGRY, extra_body=args)
        else:
            client.completions.create(model="finn", prompt="hi", extra_body=args)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert err.value.body["type"] == "invalid_request_error"


# --- POST /inside: the chat page's inside view ---------------------------------------------------


def post(server, body) -> tuple[int, dict]:
    import http.client

    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/inside", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def test_inside_answers_one_token_of_a_reply(server, engine, client):
    r = client.chat.completions.create(model="finn", messages=HUNGRY, temperature=0, logprobs=True)
    tokens = [t.bytes for t in r.choices[0].logprobs.content]
    status, data = post(server, {"messages": HUNGRY, "reply": tokens, "index": 2})
    assert status == 200, data
    inside = engine.inside(HUNGRY, r.choices[0].message.content)
    t = inside.tokens[2]
    assert data["token"] == engine.tokenizer.decode([t.token])
    assert data["candidates"][0]["bytes"] == tokens[2]  # greedy: the drawn token leads
    assert [c["token"] for c in data["candidates"]] == [
        engine.tokenizer.decode([i]) for i, _ in t.top
    ]
    assert torch.allclose(torch.tensor(data["logprobs"]), t.logprobs, atol=1e-5)
    assert len(data["context"]) == t.position  # the prompt's tokens and the reply's before it
    assert data["context"][0] == "<|im_start|>"
    attention = torch.tensor(data["attention"])
    assert attention.shape == (engine.cfg.n_layer, engine.cfg.n_head, t.position)
    assert torch.allclose(attention.sum(-1), torch.ones(attention.shape[:2]), atol=1e-5)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": HUNGRY, "reply": [[104, 105]], "index": 1}, "index"),
        ({"messages": HUNGRY, "reply": [[]], "index": 0}, "reply"),
        ({"messages": HUNGRY, "reply": [[300]], "index": 0}, "reply"),
        ({"messages": HUNGRY, "reply": [[104]], "index": 0, "top": 21}, "top"),
        ({"messages": [], "reply": [[104]], "index": 0}, "messages"),
    ],
)
def test_inside_refuses_what_it_cannot_answer(server, body, param):
    status, data = post(server, body)
    assert status == 400 and data["error"]["param"] == param, data


def test_turns_after_the_last_user_message_that_pass_the_context_are_a_400(server, client):
    import openai

    long = HUNGRY + [{"role": "assistant", "content": "worms " * 2000}]
    status, data = post(server, {"messages": long, "reply": [[104]], "index": 0})
    assert status == 400 and data["error"]["param"] == "messages", data
    assert "after the last user message" in data["error"]["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="finn", messages=long)
    assert err.value.body["code"] == "context_length_exceeded"
    # A long conversation before the last user message is cut, and usage counts what was seen.
    history = [{"role": "user", "content": "worms " * 500}, {"role": "assistant", "content": "ok"}]
    r = client.chat.completions.create(model="finn", messages=history + HUNGRY, max_tokens=8)
    assert r.usage.prompt_tokens <= 128 - 8
