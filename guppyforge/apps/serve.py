"""`guppyforge serve`: an OpenAI-compatible HTTP server for one run.

Any OpenAI client can talk to the character:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="cat", messages=[{"role": "user", "content": "hi"}])

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (plain, or
server-sent events with `"stream": true`; `"trace": true` adds where the reply came from,
see apps/trace.py). Built on the standard library's ThreadingHTTPServer:
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from guppyforge.apps.openai_api import MAX_BODY, ChatRequest, RequestError, parse_chat_request
from guppyforge.errors import GuppyError
from guppyforge.model.engine import Engine
from guppyforge.model.run import Run, load_run, pick_device


def _json_line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


class Reply:
    """One chat completion: the engine's text, stepped under the server's lock, in OpenAI's
    envelope."""

    def __init__(self, server: GuppyServer, req: ChatRequest):
        self.server, self.req = server, req
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        # The same prompt building, stop rules and counting as `guppyforge chat`.
        self.generation = server.engine.stream(req.messages, stop=req.stop, **req.options)

    def pieces(self) -> Iterator[str]:
        """The reply's text, piece by piece."""
        pieces = iter(self.generation)
        try:
            while True:
                # One model step at a time under the lock: concurrent replies interleave token
                # by token (a long one never starves a short one) instead of fighting over the
                # same cores, which each forward pass already uses in full.
                with self.server.model_lock:
                    piece = next(pieces, None)
                if piece is None:
                    break
                yield piece
        finally:
            self.generation.close()  # a client that hung up ends the model here

    def text(self) -> str:
        return "".join(self.pieces())

    def usage(self) -> dict:
        c = self.generation
        return {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
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
        choice = {"index": 0, "message": message, "finish_reason": self.generation.finish_reason}
        return (
            self._envelope("chat.completion", [choice]) | {"usage": self.usage()} | self.trace(text)
        )

    def trace(self, text: str) -> dict:
        """`{"trace": ...}` when the request asked for it (`"trace": true`), else nothing."""
        if not self.req.trace:
            return {}
        from guppyforge.apps.trace_store import trace_json

        return {"trace": trace_json(self.server.run.path, text)}

    def chunks(self) -> Iterator[dict]:
        """The reply as `chat.completion.chunk` objects: role first, then text, then the end."""

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])

        yield chunk({"role": "assistant", "content": ""})
        text = []
        for piece in self.pieces():
            text.append(piece)
            yield chunk({"content": piece})
        yield chunk({}, self.generation.finish_reason) | self.trace("".join(text))
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
        self.engine = Engine.from_run(run)
        # Each request keeps its own generation state (KV cache, RNG) in its Completion; the
        # lock only takes turns on the model, one token at a time (see Reply.pieces).
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
