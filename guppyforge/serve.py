"""`guppyforge serve`: an OpenAI-compatible HTTP server for one run.

Any OpenAI client can talk to the character:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="cat", messages=[{"role": "user", "content": "hi"}])

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (plain, or
server-sent events with `"stream": true`). Built on the standard library's ThreadingHTTPServer:
one thread per connection, no framework to learn. Errors come back in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so clients raise their usual exceptions.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from guppyforge import chat
from guppyforge.runs import Run

MAX_BODY = 1 << 20  # 1 MiB: a whole conversation at this context is a few KB
ROLES = ("system", "developer", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 64  # chat.stream_reply's default


class RequestError(Exception):
    """A client mistake: becomes a 4xx response in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error"  # OpenAI's type for every 4xx, 404 included
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


@dataclass
class ChatRequest:
    """The fields of a chat completion request that this server honours.

    `model` is accepted whatever it names (the server has one model, which every response
    names); fields it does not know (`user`, `frequency_penalty`...) are ignored, as OpenAI's
    own clients send some by default.
    """

    messages: list[dict]
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # keyword arguments for chat.stream_reply


def _number(body: dict, name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; `"temperature": true` is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(400, f"'{name}' must be a number from {lo} to {hi}.", name)
    return float(value)


def _integer(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise RequestError(400, f"'{name}' must be an integer >= {lo}.", name)
    if hi is not None and value > hi:
        raise RequestError(400, f"'{name}' must be an integer <= {hi}.", name)
    return value


def _content(message: dict, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise RequestError(400, f"'{where}.content' must be a string or a list of text parts.", where)


def parse_chat_request(body: object) -> ChatRequest:
    """Check a decoded request body; RequestError names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "'messages' must be a non-empty list.", "messages")
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"'{where}' must be an object.", where)
        if m.get("role") not in ROLES:
            raise RequestError(
                400, f"'{where}.role' must be one of {', '.join(ROLES)}.", f"{where}.role"
            )
        # "developer" is OpenAI's newer name for the system prompt.
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _content(m, where)})
    if _integer(body, "n", 1) not in (None, 1):
        raise RequestError(400, "Only n=1 is supported.", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false.", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError(400, "'stream_options' must be an object.", "stream_options")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if (
        not isinstance(stop, list)
        or len(stop) > 4
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise RequestError(400, "'stop' must be a string or a list of up to 4 strings.", "stop")
    # max_completion_tokens is the newer name of max_tokens; either caps the reply.
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion_tokens = _integer(body, "max_completion_tokens", 1)
    options = {
        "temperature": _number(body, "temperature", 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.0, 1.0),
        "max_new_tokens": max_completion_tokens or max_tokens,
        "seed": _integer(body, "seed", -(2**63), 2**64 - 1),  # what torch's generator takes
    }
    return ChatRequest(
        messages=messages,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        stop=stop,
        # Fields left out keep chat's defaults (temperature 0.7, 64 new tokens).
        options={k: v for k, v in options.items() if v is not None},
    )


def _json_line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


class StopFilter:
    """Cuts a streamed reply at the first stop string, even one split across pieces.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is; so a client never receives part of a stop string.
    """

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, piece: str) -> str:
        """The text now safe to send; sets `stopped` once a stop string is seen."""
        if not self.stops:
            return piece
        self.pending += piece
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        # Keep the longest tail that is a prefix of some stop string.
        keep = max(
            (n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])),
            default=0,
        )
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Reply:
    """One chat completion: the model's text under the server's lock, plus OpenAI's envelope."""

    def __init__(self, server: GuppyServer, req: ChatRequest):
        self.server, self.req = server, req
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        run = server.run
        # The same trimming as chat: the oldest turns go first when the context is full.
        self.max_new = req.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        ids, _ = chat.build_prompt(run.tokenizer, req.messages, run.model.cfg.context, self.max_new)
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason = "stop"

    def pieces(self) -> Iterator[str]:
        """The reply's text, piece by piece, cut at the first stop string."""
        run = self.server.run
        stream = chat.stream_reply(run, self.req.messages, on_token=self._count, **self.req.options)
        stop = StopFilter(self.req.stop)
        try:
            while not stop.stopped:
                # Every step of the generator runs under the lock, its first (which prepares
                # the weights and hooks on_token onto the model) and its close (which unhooks)
                # included: the model and its hook table are shared by all requests.
                with self.server.model_lock:
                    piece = next(stream, None)
                if piece is None:
                    break
                if out := stop.feed(piece):
                    yield out
            if not stop.stopped:
                # The model ended the reply with <|im_end|>, unless it ran out of tokens or of
                # context first (OpenAI's "length"). generate samples one token past the last
                # position it feeds, hence the + 1.
                room = run.model.cfg.context - self.prompt_tokens + 1
                limit = min(self.max_new, room)
                self.finish_reason = "length" if self.completion_tokens >= limit else "stop"
            if out := stop.flush():
                yield out
        finally:
            with self.server.model_lock:
                stream.close()  # a client that hung up, or a stop string, ends the model here

    def _count(self, token: int, logits: object) -> None:
        # Text pieces are not tokens (a character can span several), so count the tokens here.
        self.completion_tokens += 1

    def text(self) -> str:
        return "".join(self.pieces())

    def usage(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.server.model_id,
            "choices": choices,
        }

    def completion(self, text: str) -> dict:
        """The whole reply as one `chat.completion` object."""
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        return self._envelope("chat.completion", [choice]) | {"usage": self.usage()}

    def chunks(self) -> Iterator[dict]:
        """The reply as `chat.completion.chunk` objects: role first, then text, then the end."""

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])

        yield chunk({"role": "assistant", "content": ""})
        for piece in self.pieces():
            yield chunk({"content": piece})
        yield chunk({}, self.finish_reason)
        if self.req.include_usage:  # OpenAI's form: one last chunk, no choices, the usage
            yield self._envelope("chat.completion.chunk", []) | {"usage": self.usage()}


class GuppyServer(ThreadingHTTPServer):
    """The HTTP server, holding the run it serves."""

    daemon_threads = True  # a hung client must not keep the process alive on Ctrl+C

    def __init__(self, run: Run, address: tuple[str, int]):
        super().__init__(address, Handler)
        self.run = run
        # The persona's name, as chat shows it; the folder's name for runs without one.
        self.model_id = (run.config.get("persona") or {}).get("name") or run.path.name
        self.created = int(time.time())
        # Each request keeps its own generation state (KV cache, RNG) inside its generator; the
        # lock only serialises the steps that touch the shared model, one token at a time.
        # Without it, two threads would share one model's hooks and its one-off weight
        # re-layout (chat.prepare_for_decoding) mid-forward, and would fight over the same CPU
        # cores anyway (each forward already uses them all). Stepping under the lock
        # interleaves concurrent replies token by token, so a long one never starves a short one.
        self.model_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(run: Run, host: str = "127.0.0.1", port: int = 8000) -> GuppyServer:
    """A server for `run`, bound but not yet serving: call `serve_forever()` (port 0: any free)."""
    return GuppyServer(run, (host, port))


class Handler(BaseHTTPRequestHandler):
    server: GuppyServer
    server_version = "guppyforge"
    streaming = False  # set once a stream's headers are out: no JSON error can follow them

    # --- routing ---------------------------------------------------------------------------

    def _route(self) -> None:
        method, path = self.command, self.path.split("?", 1)[0].rstrip("/")
        routes = {
            "/v1/models": {"GET": self._list_models},
            f"/v1/models/{self.server.model_id}": {"GET": self._get_model},
            "/v1/chat/completions": {"POST": self._chat_completions},
        }
        try:
            if path not in routes:
                if path.startswith("/v1/models/"):
                    model = path.removeprefix("/v1/models/")
                    ours = self.server.model_id
                    message = f"The model '{model}' does not exist; this server has '{ours}'."
                    raise RequestError(404, message, "model", "model_not_found")
                raise RequestError(404, f"Invalid URL ({method} {path}).", code="not_found")
            if method not in routes[path]:
                raise RequestError(
                    405, f"{path} does not accept {method}.", code="method_not_allowed"
                )
            routes[path][method]()
        except RequestError as e:
            self._send_json(e.status, e.body())
        except Exception as e:  # a bug of ours: say so in the client's terms, keep serving
            self.log_error("%s", traceback.format_exc())
            if not self.streaming:  # mid-stream the status line is gone; the client sees EOF
                error = {"message": f"Internal error: {e}", "type": "server_error"}
                self._send_json(500, {"error": error | {"param": None, "code": None}})

    # Every method goes through _route, so a wrong one gets a JSON 405, not stdlib's HTML 501.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _route

    # --- endpoints -------------------------------------------------------------------------

    def _model_card(self) -> dict:
        return {
            "id": self.server.model_id,
            "object": "model",
            "created": self.server.created,
            "owned_by": "guppyforge",
        }

    def _list_models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self._model_card()]})

    def _get_model(self) -> None:
        self._send_json(200, self._model_card())

    def _chat_completions(self) -> None:
        req = parse_chat_request(self._read_json())
        reply = Reply(self.server, req)
        if req.stream:
            self._stream(reply)
        else:
            text = reply.text()
            self._send_json(200, reply.completion(text))

    def _stream(self, reply: Reply) -> None:
        """Server-sent events: one `data: {chunk}` per piece of text, then `data: [DONE]`."""
        self.streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # no Content-Length: the stream ends when the connection closes
        try:
            # closing(): on a client that hung up, stop the model now rather than when the
            # garbage collector gets round to the abandoned generator.
            with closing(reply.chunks()) as chunks:
                for chunk in chunks:
                    self.wfile.write(b"data: " + _json_line(chunk) + b"\n\n")
                    self.wfile.flush()  # send each piece now, not when a buffer fills
            self.wfile.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass  # the client went away; closing the generator stops the model

    # --- plumbing --------------------------------------------------------------------------

    def _read_json(self) -> object:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "A Content-Length header is required.") from None
        if length > MAX_BODY:
            # Read (a bounded part of) what the client is sending before answering: closing on
            # unread data makes the kernel reset the connection, and the client would see a
            # "connection reset" instead of this error.
            self.rfile.read(min(length, 8 * MAX_BODY))
            raise RequestError(413, f"The request body is over {MAX_BODY} bytes.")
        try:
            return json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"The request body is not valid JSON ({e}).") from None

    def _send_json(self, status: int, body: dict) -> None:
        data = _json_line(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """`guppyforge serve`: load the run and answer requests until Ctrl+C."""
    from guppyforge.errors import GuppyError
    from guppyforge.runs import load_run, pick_device

    run = load_run(run_dir, device=str(pick_device(device)))
    try:
        server = make_server(run, host, port)
    except OSError as e:  # port taken, address not on this machine, no permission...
        raise GuppyError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror})."
        ) from None
    print(f"serving {server.model_id} at {server.url} (Ctrl+C to stop)", flush=True)
    try:
        with suppress(KeyboardInterrupt):  # Ctrl+C is how a server is stopped
            server.serve_forever()
    finally:
        server.server_close()
