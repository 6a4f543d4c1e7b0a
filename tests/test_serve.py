"""`guppyforge serve`: the official `openai` client talks to the character over loopback.

The server (uvicorn, in a thread) listens on a free port (port 0) for the whole module.
Well-formed requests go through the `openai` client, as a user's code would; malformed ones are
sent raw with http.client, since the client would refuse to send them. test_serve_limits.py
sends the hostile ones; test_serve_page.py drives the chat page in headless Chromium.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import serving, wait_for

from guppyforge.model.engine import Engine, build_prompt
from guppyforge.model.run import load_run
from guppyforge.model.sampling import StopStrings as StopFilter

HUNGRY = [{"role": "user", "content": "are you hungry"}]


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


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Send a request as is; return (status, decoded JSON body)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


# --- what a user sees --------------------------------------------------------------------------


def test_lists_the_one_model(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model_id]
    assert client.models.retrieve(server.model_id).id == server.model_id


def test_reply_equals_chat_reply_at_temperature_0(client, run, server):
    expected = Engine.from_run(run).reply(HUNGRY, temperature=0)
    response = client.chat.completions.create(model=server.model_id, messages=HUNGRY, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "stop" and response.object == "chat.completion"
    assert response.model == server.model_id and response.id.startswith("chatcmpl-")
    usage = response.usage
    assert usage.prompt_tokens == len(
        build_prompt(run.tokenizer, HUNGRY, run.model.cfg.context, 64)[0]
    )
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chunks_join_to_the_same_text(client, server, run):
    expected = Engine.from_run(run).reply(HUNGRY, temperature=0)
    stream = client.chat.completions.create(
        model=server.model_id,
        messages=HUNGRY,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0  # include_usage: a last chunk with the usage


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client, server, run):
    response = client.chat.completions.create(
        model=server.model_id, messages=HUNGRY, temperature=0, max_completion_tokens=2
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 2
    full = Engine.from_run(run).reply(HUNGRY, temperature=0)
    assert full.startswith(response.choices[0].message.content)


def test_stop_string_ends_the_reply_before_it(client, server, run):
    full = Engine.from_run(run).reply(HUNGRY, temperature=0)
    stop = full.split()[1]  # the reply's second word
    response = client.chat.completions.create(
        model=server.model_id, messages=HUNGRY, temperature=0, stop=[stop]
    )
    assert response.choices[0].message.content == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_same_seed_same_sampled_reply(client, server):
    def ask():
        return (
            client.chat.completions.create(
                model=server.model_id, messages=HUNGRY, temperature=1.0, top_p=0.9, seed=7
            )
            .choices[0]
            .message.content
        )

    assert ask() == ask()


class SlowSteps:
    """Records which replies each batched decoding step held, and slows each step.

    The fixture model answers in milliseconds, so without the pause requests would rarely be
    in flight together; with it, eight at once certainly are.
    """

    def __init__(self):
        self.steps: list[list[int]] = []

    def __call__(self, rows) -> None:
        self.steps.append([id(r) for r in rows])
        time.sleep(0.003)  # a slower model step, not a wait: nothing to wait on here


def test_concurrent_requests_interleave_and_each_gets_its_own_reply(
    client, run, server, monkeypatch
):
    prompts = ["are you hungry", "hello", "where do you sleep", "do you like bugs"] * 2
    expected = [
        Engine.from_run(run).reply([{"role": "user", "content": p}], temperature=0) for p in prompts
    ]
    steps = SlowSteps()
    monkeypatch.setattr(server.decoder, "on_step", steps)

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": prompts[i]}]
        if i % 2:  # half of them streamed
            stream = client.chat.completions.create(
                model=server.model_id, messages=messages, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        response = client.chat.completions.create(
            model=server.model_id, messages=messages, temperature=0
        )
        return response.choices[0].message.content

    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(ask, range(len(prompts))))
    assert replies == expected
    # They really were generated together: one forward pass decoded several replies (each with
    # its own rows of the KV cache and its own RNG), and every reply took several steps.
    assert max(len(rows) for rows in steps.steps) >= 4


def test_a_client_that_hangs_up_mid_stream_stops_the_model_and_frees_it(
    client, server, run, monkeypatch
):
    steps = SlowSteps()  # slow steps: the reply is still being written at hang-up
    monkeypatch.setattr(server.decoder, "on_step", steps)
    body = json.dumps({"messages": HUNGRY, "stream": True, "temperature": 0}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while received.count(b"data: ") < 3:  # the role chunk and two pieces of text
            chunk = sock.recv(4096)
            assert chunk, received  # the server must not close the stream early
            received += chunk
    # The server notices at once (uvicorn sees the socket close): its batch row is freed.
    wait_for(lambda: raw(server, "GET", "/health")[1]["active"] == 0, "the row freed")
    steps_after_hang_up = len(steps.steps)
    response = client.chat.completions.create(model=server.model_id, messages=HUNGRY, temperature=0)
    assert response.choices[0].message.content == Engine.from_run(run).reply(HUNGRY, temperature=0)
    # The abandoned reply stopped early: fewer model steps than the whole reply takes.
    assert steps_after_hang_up < response.usage.completion_tokens


def test_a_long_conversation_is_trimmed_to_the_context_as_chat_does(client, server, run):
    messages = []
    for i in range(40):  # far more than 128 tokens
        messages += [
            {"role": "user", "content": f"do you like worms {i}"},
            {"role": "assistant", "content": "worms? yes. always yes."},
        ]
    messages.append({"role": "user", "content": "are you hungry"})
    response = client.chat.completions.create(
        model=server.model_id, messages=messages, temperature=0
    )
    ids, dropped = build_prompt(run.tokenizer, messages, run.model.cfg.context, 64)
    assert dropped > 0 and response.usage.prompt_tokens == len(ids)
    assert response.choices[0].message.content == Engine.from_run(run).reply(
        messages, temperature=0
    )


# --- malformed requests get OpenAI-shaped 4xx errors --------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"{}", "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": "hi"}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0]"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    ],
)
def test_malformed_requests_get_400(server, body, param):
    status, data = raw(
        server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    assert status == 400
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["param"] == param


def test_body_too_large_gets_413(server):
    body = b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}'
    status, data = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 413 and "error" in data


def test_unknown_path_gets_404_and_wrong_method_405(server):
    status, data = raw(server, "GET", "/v1/embeddings")
    assert status == 404 and data["error"]["code"] == "not_found"
    status, data = raw(server, "GET", "/v1/chat/completions")
    assert status == 405 and data["error"]["message"]


def test_openai_client_raises_its_usual_errors(client, server):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.model_id, messages=HUNGRY, n=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_stop_filter_holds_back_a_stop_string_split_across_pieces():
    f = StopFilter(["</s>"])
    sent = [f.feed(p) for p in ["hi <", "/", "s> more"]]
    assert sent == ["hi ", "", ""] and f.stopped


def test_text_completions_continue_a_raw_prompt(client, server, run):
    prompt = "<|im_start|>user\nare you hungry<|im_end|>\n<|im_start|>assistant\n"
    response = client.completions.create(
        model=server.model_id, prompt=prompt, temperature=0, max_tokens=64
    )
    assert response.choices[0].text == Engine.from_run(run).reply(HUNGRY, temperature=0)
    assert response.object == "text_completion" and response.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=server.model_id, prompt=prompt, temperature=0, max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert response.choices[0].text.startswith("".join(c.choices[0].text for c in chunks))


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_gets_a_reply_and_a_stream(server, run):
    url = server.url + "/chat/completions"
    body = json.dumps({"messages": HUNGRY, "temperature": 0})
    plain = subprocess.run(
        ["curl", "-sS", url, "-d", body], capture_output=True, text=True, timeout=60
    )
    expected = Engine.from_run(run).reply(HUNGRY, temperature=0)
    assert json.loads(plain.stdout)["choices"][0]["message"]["content"] == expected
    stream_body = json.dumps({"messages": HUNGRY, "temperature": 0, "stream": True})
    streamed = subprocess.run(
        ["curl", "-sSN", url, "-d", stream_body], capture_output=True, text=True, timeout=60
    )
    events = [line.removeprefix("data: ") for line in streamed.stdout.splitlines() if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == expected


def test_unknown_model_is_refused_not_answered_as_the_character(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=HUNGRY)
    with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
        client.chat.completions.create(model="finn", messages=HUNGRY, frequency_penalty=1.0)
