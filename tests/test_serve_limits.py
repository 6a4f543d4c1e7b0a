"""`guppyforge serve` under abuse: hostile requests get 4xx answers, slow clients time out, and
the server still answers correctly afterwards. Loopback only, short timeouts, bounded loops."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from guppyforge.apps.serve import Limits, make_server, serve
from guppyforge.errors import GuppyError
from guppyforge.model.engine import Engine
from guppyforge.model.run import load_run

HUNGRY = [{"role": "user", "content": "are you hungry"}]
LIMITS = Limits(max_body=4096, max_messages=8, max_prompt_chars=500, max_tokens=32,
                max_batch=4, body_timeout=0.5, head_timeout=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def run(micro_run):
    return load_run(Path(micro_run))


@pytest.fixture(scope="module")
def server(run):
    srv = make_server(run, "127.0.0.1", 0, limits=LIMITS, api_key="sesame")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def send(server, method: str, path: str, body: bytes | None = None, key: str | None = "sesame",
         headers: dict | None = None) -> tuple[int, dict | str]:  # fmt: skip
    """One request as is; (status, JSON body or text)."""
    conn = http.client.HTTPConnection(*server.server_address, timeout=10)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    conn.request(method, path, body=body, headers=auth | (headers or {}))
    response = conn.getresponse()
    data = response.read()
    conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode(errors="replace")


def chat(**fields) -> bytes:
    return json.dumps({"messages": HUNGRY, "temperature": 0} | fields).encode()


def raw_socket(server, data: bytes, wait: float = 3.0) -> bytes:
    """Bytes sent as they are on a fresh connection; what came back before it closed or `wait`."""
    with socket.create_connection(server.server_address, timeout=wait) as sock:
        sock.sendall(data)
        received, deadline = b"", time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def test_a_battery_of_hostile_requests_gets_4xx_then_a_normal_request_is_answered(server, run):
    path = "/v1/chat/completions"
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {
        "oversize body": (send(server, "POST", path, b"x" * 10_000), 413),
        "deep JSON": (send(server, "POST", path, deep[:4000] + b"}"), 400),
        "deep JSON, in bounds": (send(server, "POST", path, b"[" * 2000 + b"]" * 2000), 400),
        "wrong type": (send(server, "POST", path, chat(temperature=True)), 400),
        "list for a string": (send(server, "POST", path, chat(stop=[["x"]])), 400),
        "unknown field": (send(server, "POST", path, chat(wizardry=1)), 400),
        "penalty it cannot apply": (send(server, "POST", path, chat(presence_penalty=1.5)), 400),
        "tools": (send(server, "POST", path, chat(tools=[{"type": "function"}])), 400),
        "unknown model": (send(server, "POST", path, chat(model="gpt-4")), 404),
        "too many messages": (send(server, "POST", path, chat(messages=HUNGRY * 9)), 400),
        "prompt too long": (send(server, "POST", path, chat(messages=[HUNGRY[0] | {"content": "a" * 600}])), 400),
        "max_tokens over the cap": (send(server, "POST", path, chat(max_tokens=33)), 400),
        "no key": (send(server, "POST", path, chat(), key=None), 401),
        "wrong key": (send(server, "GET", "/v1/models", key="open"), 401),
        "HEAD": (send(server, "HEAD", path), 405),
        "OPTIONS": (send(server, "OPTIONS", path), 405),
        "DELETE": (send(server, "DELETE", "/v1/models"), 405),
        "not a path": (send(server, "GET", "/../../etc/passwd"), 404),
    }  # fmt: skip
    for name, ((status, body), expected) in cases.items():
        assert status == expected, (name, status, body)
        if name not in ("HEAD",):  # a HEAD answer has no body
            assert set(body["error"]) == {"message", "type", "param", "code"}, (name, body)
    assert "limit is 8 (--max-messages)" in cases["too many messages"][0][1]["error"]["message"]
    assert "--max-tokens" in cases["max_tokens over the cap"][0][1]["error"]["message"]
    assert "--max-body" in cases["oversize body"][0][1]["error"]["message"]

    # Malformed HTTP is refused by uvicorn's parser itself, before any of our code.
    for head in (b"Content-Length: -1\r\n", b"Content-Length: abc\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n"):  # fmt: skip
        answer = raw_socket(
            server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n{}"
        )
        assert answer.startswith(b"HTTP/1.1 400"), (head, answer[:80])
    assert raw_socket(server, b"\x16\x03\x01 not http at all\r\n\r\n").startswith(b"HTTP/1.1 400")

    status, body = send(server, "POST", path, chat())
    assert status == 200
    assert body["choices"][0]["message"]["content"] == Engine.from_run(run).reply(
        HUNGRY, temperature=0
    )


def test_stalled_clients_time_out_without_blocking_others(server, run):
    expected = Engine.from_run(run).reply(HUNGRY, temperature=0)
    body = chat()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: {len(body) + 50}\r\n\r\n"
    stalled, sent = {}, []

    def stall(name: str, data: bytes) -> None:
        """Send `data`, then wait for the server: (what came back, whether it closed first)."""
        done = threading.Event()
        sent.append(done)
        with socket.create_connection(server.server_address, timeout=30) as sock:
            sock.sendall(data)
            done.set()
            received = b""
            # A reset, like a clean close, means the server dropped the client.
            with contextlib.suppress(ConnectionResetError):
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                except TimeoutError:  # 30 s: far past --timeout, so the server never dropped it
                    stalled[name] = (received, False)
                    return
            stalled[name] = (received, True)

    threads = [
        threading.Thread(target=stall, args=("short body", head.encode() + body)),
        threading.Thread(target=stall, args=("half a head", b"POST /v1/chat/completions HTTP/1.1\r\nHost")),
        threading.Thread(target=stall, args=("nothing", b"")),
    ]  # fmt: skip
    for t in threads:
        t.start()
    wait_for(lambda: len(sent) == 3 and all(e.is_set() for e in sent), "the stalled sends")
    status, answer = send(server, "POST", "/v1/chat/completions", chat())  # meanwhile, a normal one
    assert status == 200 and answer["choices"][0]["message"]["content"] == expected
    for t in threads:
        t.join()
    assert all(closed for _, closed in stalled.values()), stalled  # the server dropped each
    assert b" 408 " in stalled["short body"][0].split(b"\r\n")[0]  # --timeout: 0.5 s here
    assert stalled["half a head"][0] == b"" and stalled["nothing"][0] == b""  # no answer


def test_a_client_that_hangs_up_mid_stream_frees_its_slot_at_once(server, run, monkeypatch):
    # Slow steps: every reply is still being written when its client goes.
    monkeypatch.setattr(server.decoder, "on_step", lambda rows: time.sleep(0.1))  # not a wait
    body = chat(stream=True)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Length: {len(body)}\r\n\r\n"
    socks = [socket.create_connection(server.server_address) for _ in range(LIMITS.max_batch)]
    for sock in socks:  # every batch row taken...
        sock.settimeout(10)
        sock.sendall(head.encode() + body)
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk

    def active() -> int:
        return send(server, "GET", "/health")[1]["active"]

    wait_for(lambda: active() == LIMITS.max_batch, "every row taken")
    for sock in socks:  # ...then every client gone mid-reply
        sock.close()
    wait_for(lambda: active() == 0, "every row freed")
    status, answer = send(server, "POST", "/v1/chat/completions", chat())
    assert answer["choices"][0]["message"]["content"] == Engine.from_run(run).reply(
        HUNGRY, temperature=0
    )


def test_binding_beyond_loopback_needs_an_api_key(micro_run):
    with pytest.raises(GuppyError, match="--api-key"):
        serve(micro_run, host="0.0.0.0", port=0)


def test_a_missing_serve_extra_gets_a_one_line_install_hint(micro_run):
    code = "import sys; sys.modules['fastapi'] = None; from guppyforge.apps.cli import main; sys.argv = ['guppyforge', 'serve', sys.argv[1]]; main()"
    out = subprocess.run([sys.executable, "-c", code, micro_run], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: guppyforge serve needs FastAPI, uvicorn and sse-starlette (fastapi is missing): pip install 'guppyforge[serve]'"
    ]


# --- refusals a client can read: the body is never half-read into a reset -----------------------


def test_a_10_mb_body_gets_the_413_json_not_a_reset(server):
    status, body = send(server, "POST", "/v1/chat/completions", b"x" * (10 << 20))
    assert status == 413, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "body_too_large" and "--max-body" in body["error"]["message"]


def test_a_too_slow_body_gets_the_408_json_not_a_broken_pipe(server):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Length: 3000\r\n\r\n"
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(head + b"{" * 10)
        assert select.select([sock], [], [], 10)[0]  # the 408 is on its way (--timeout 0.5 s)
        sock.sendall(b"{" * 2990)  # the rest, late: read and dropped, never a reset
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line, answer[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout" and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_serve_timeout_must_be_a_finite_number(micro_run, value):
    from click.testing import CliRunner

    from guppyforge.apps.cli import cli

    result = CliRunner().invoke(cli, ["serve", str(micro_run), "--timeout", value])
    assert result.exit_code == 2 and "--timeout" in result.output, result.output
    assert "Traceback" not in result.output


def test_host_beyond_loopback_without_a_key_is_refused_before_torch_is_imported(micro_run):
    code = "import sys; from guppyforge.apps.cli import main; sys.argv = ['guppyforge', 'serve', sys.argv[1], '--host', '0.0.0.0']\ntry:\n    main()\nexcept SystemExit:\n    print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, micro_run], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "False"  # neither torch nor the model was loaded
    assert out.stderr.strip().splitlines()[0].startswith("error: --host 0.0.0.0:")
    assert "--api-key" in out.stderr
