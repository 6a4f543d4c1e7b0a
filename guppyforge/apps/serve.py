"""`guppyforge serve`: an OpenAI-compatible server and a chat page for one run: the endpoints,
batched decoding through the one engine, streaming. The guards each request passes first are in
serve_http.py, their limits in serve_limits.py, the request and response shapes in openai_api.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from contextlib import suppress
from importlib.resources import files
from typing import TYPE_CHECKING

try:  # the serve extra (serve_http.py needs it too)
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from sse_starlette import EventSourceResponse
    from starlette.exceptions import HTTPException

    from guppyforge.apps.serve_http import HeadTimeoutH11, check_key, read_body
except ImportError as e:  # the optional extra is not installed
    from guppyforge.errors import GuppyError

    raise GuppyError(
        f"guppyforge serve needs FastAPI, uvicorn and sse-starlette ({e.name} is missing): "
        "pip install 'guppyforge[serve]'"
    ) from None

from guppyforge.apps import openai_api as api
from guppyforge.apps.openai_api import ApiError
from guppyforge.apps.serve_limits import HOST, PORT, Limits, check_exposure
from guppyforge.defaults import MAX_NEW_TOKENS
from guppyforge.errors import GuppyError

if TYPE_CHECKING:
    from guppyforge.model.run import Run

# --- `guppyforge serve`: an OpenAI-compatible server and a chat page for one run.
#
# Any OpenAI client can talk to the character, and a browser can at `http://127.0.0.1:8000/`:
#
#     from openai import OpenAI
#     client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
#     client.chat.completions.create(model="cat", messages=[{"role": "user", "content": "hi"}])
#
# Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (plain, or server-sent events
# with `"stream": true`; `"trace": true` adds where a chat reply came from, see evaluate/trace.py),
# `GET /v1/models[/{id}]`, `GET /health`, and the chat page at `/` (with `POST /inside` for its
# inside view: one reply token's candidates and attention, from `Engine.inside`).


# Built on FastAPI and uvicorn (the `serve` extra): they parse HTTP, route and frame events;
# requests are checked by the typed models in openai_api.py. Every reply is decoded by one
# BatchDecoder thread (model/engine.py), so concurrent requests share each forward pass.
#
# Torch and the engine load only when a server starts: `serve --host` is checked, and a missing
# extra named, before the model's stack costs seconds.

# The chat page, shared with `export --to web`: here page.json picks its server.js backend.
PAGE = files("guppyforge.apps") / "page"


def inside_token(engine, req: api.InsideRequest, max_tokens: int) -> api.InsideToken:
    """`Engine.inside` for the token the page clicked, in the shape the page reads."""
    from guppyforge.model.tokenizer import PromptTooLong, token_from_bytes

    tok = engine.tokenizer
    reply = [token_from_bytes(tok, bytes(t)) for t in req.reply[: req.index + 1]]
    if None in reply:
        where = f"reply[{reply.index(None)}]"
        raise ApiError(400, f"'{where}': no token of this model has these bytes.", "reply")
    # The prompt the reply was written after: chat's budget, as a request without max_tokens.
    budget = min(MAX_NEW_TOKENS, max_tokens)
    messages = [m.plain() for m in req.messages]
    try:
        seen = engine.inside(messages, reply, max_new_tokens=budget, top=req.top)
    except PromptTooLong as e:
        raise ApiError(400, f"'messages': {e}.", "messages", "context_length_exceeded") from None
    if len(seen.tokens) <= req.index:
        raise ApiError(400, f"'index': token {req.index} is past the model's context.", "index")
    t = seen.tokens[req.index]
    return api.InsideToken(
        **api.token_entry(tok, t.token, t.logprob),
        candidates=[api.TopLogprob(**api.token_entry(tok, i, lp)) for i, lp in t.top],
        logprobs=t.logprobs.tolist(),
        context=[tok.decode([i], skip_special_tokens=False) for i in seen.ids[: t.position]],
        attention=t.attention.tolist(),
    )


def prompt_ids(engine, messages: list[dict], options: dict) -> list[int]:
    """The prompt the model sees (so what `usage` counts); one it cannot fit is a 400."""
    from guppyforge.model.tokenizer import PromptTooLong

    try:
        return engine.prompt(messages, options["max_new_tokens"])[0]
    except PromptTooLong as e:
        raise ApiError(400, f"'messages': {e}.", "messages", "context_length_exceeded") from None


class Reply:
    """One reply in flight: the decoder thread's text pieces, handed to the event loop.

    With `logprobs` (how many candidates per token), each piece comes with its tokens: each
    token's log-probability and its likeliest candidates at temperature 1, computed in the
    decoder's thread from the logits the token was drawn from (model/inside.py).
    """

    def __init__(self, server: Server, ids: list[int], options: dict, logprobs: int | None = None):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str | None, list]] = asyncio.Queue()
        self.decoder, self.tokenizer = server.decoder, server.engine.tokenizer
        self.id, self.created = uuid.uuid4().hex, int(time.time())
        self.top, self.tokens = logprobs, []  # the tokens since the last piece, when asked
        if logprobs is not None:
            options = {**options, "on_token": self._token}
        from guppyforge.model.engine import Busy  # loaded already: the server holds an engine

        try:
            self.row = server.decoder.submit(ids, self._emit, **options)
        except Busy as e:
            raise ApiError(503, f"The server is busy ({e}); try again shortly.") from None

    def _token(self, token: int, logits) -> None:  # runs in the decoder's thread
        from guppyforge.model.inside import top_logprobs

        self.tokens.append((token, *top_logprobs(logits, token, self.top)))

    def _emit(self, piece: str | None) -> None:  # runs in the decoder's thread
        # A piece carries the tokens that completed it; at the end, tokens whose text was never
        # shown (the start of a stop string) are dropped with it.
        tokens, self.tokens = self.tokens, []
        with suppress(RuntimeError):  # the loop closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (piece, tokens))

    async def pieces(self):
        """(text piece, its tokens) as they come; leaving early (a client hung up) frees its row."""
        try:
            while (item := await self.queue.get())[0] is not None:
                yield item
        finally:
            if not self.row.done:
                self.decoder.cancel(self.row)
        if self.row.finish_reason == "error":
            raise RuntimeError("the decoder failed on this reply (see the server's log)")

    async def text(self, request: Request) -> tuple[str, list] | None:
        """The whole reply and its tokens, or None if the client hung up first (row freed)."""

        async def collect() -> tuple[str, list]:
            items = [item async for item in self.pieces()]
            return "".join(p for p, _ in items), [t for _, tokens in items for t in tokens]

        async def hang_up() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(collect()), asyncio.ensure_future(hang_up())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        return tasks[0].result() if tasks[0] in done else None

    def logprobs(self, tokens: list, offset: int | None = None):
        """OpenAI's chat form of `tokens` (or the legacy completions' form, their text starting
        at `offset`); None when the request did not ask."""
        if self.top is None:
            return None
        if offset is None:
            return api.chat_logprobs(self.tokenizer, tokens)
        return api.text_logprobs(self.tokenizer, tokens, offset)

    def usage(self) -> api.Usage:
        r = self.row
        total = r.prompt_tokens + r.completion_tokens
        return api.Usage(
            prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, total_tokens=total
        )


def _events(chunks):
    """Each chunk model as one event's data, then OpenAI's `[DONE]`."""

    async def events():
        async for chunk in chunks:
            yield {"data": chunk.model_dump_json(exclude_none=True)}
        yield {"data": "[DONE]"}

    return events()


def create_app(server: Server) -> FastAPI:
    """The ASGI app: routes, typed responses, and errors in OpenAI's shape."""
    app = FastAPI(title=f"guppyforge: {server.model_id}", docs_url=None, redoc_url=None)
    limits, model_id = server.limits, server.model_id
    auth = [Depends(check_key(server.api_key))]

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        # After a body that was cut short or left unread, the connection cannot carry another
        # request: say so, and uvicorn closes it once the answer is out.
        close = {"Connection": "close"} if e.status in (408, 413) else None
        return JSONResponse(e.body(), status_code=e.status, headers=close)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"Invalid URL ({request.method} {request.url.path})."
        if e.status_code == 405:
            message = f"{request.url.path} does not accept {request.method}."
        body = ApiError(e.status_code, message if code else str(e.detail), None, code).body()
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def bug(_, e: Exception):  # ours: say so in the client's terms; uvicorn logs it
        return JSONResponse(ApiError(500, f"Internal error: {e}").body(), status_code=500)

    card = api.ModelCard(id=model_id, created=server.created)

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> api.ModelList:
        return api.ModelList(data=[card])

    @app.get("/v1/models/{model}", dependencies=auth)
    async def get_model(model: str) -> api.ModelCard:
        if model != model_id:
            message = f"The model '{model}' does not exist; this server has '{model_id}'."
            raise ApiError(404, message, "model", "model_not_found")
        return card

    async def trace(req: api.ChatRequest, text: str) -> dict | None:
        """`guppyforge why --json`'s trace of the reply, when the request asked for it."""
        if not req.trace:
            return None
        from guppyforge.evaluate.trace import trace_json

        return await asyncio.to_thread(trace_json, server.run.path, text)

    @app.post(
        "/v1/chat/completions",
        dependencies=auth,
        response_model=api.ChatCompletion,
        response_model_exclude_none=True,
    )
    async def chat_completions(request: Request):
        body = await read_body(request, limits)
        req = api.parse_request(api.ChatRequest, body, model_id, limits)
        options = req.options()
        messages = req.plain_messages()
        ids = await asyncio.to_thread(prompt_ids, server.engine, messages, options)
        reply = Reply(server, ids, options, req.logprobs_wanted())
        envelope = {"id": f"chatcmpl-{reply.id}", "created": reply.created, "model": model_id}
        if req.stream:

            async def chunks():
                def chunk(delta: api.Delta, finish_reason: str | None = None, logprobs=None):
                    choice = api.ChunkChoice(
                        delta=delta, logprobs=logprobs, finish_reason=finish_reason
                    )
                    return api.ChatCompletionChunk(**envelope, choices=[choice])

                yield chunk(api.Delta(role="assistant", content=""))
                text = []
                async for piece, tokens in reply.pieces():
                    text.append(piece)
                    yield chunk(api.Delta(content=piece), logprobs=reply.logprobs(tokens))
                last = chunk(api.Delta(), reply.row.finish_reason)
                last.trace = await trace(req, "".join(text))
                yield last
                if req.include_usage:  # OpenAI's form: one last chunk, no choices, the usage
                    yield api.ChatCompletionChunk(**envelope, choices=[], usage=reply.usage())

            return server.stream(_events(chunks()))
        text, tokens = await reply.text(request) or ("", [])
        finish, message = reply.row.finish_reason or "stop", api.ChatMessage(content=text)
        logprobs = reply.logprobs(tokens)
        choice = api.ChatChoice(message=message, logprobs=logprobs, finish_reason=finish)
        traced = await trace(req, text)
        return api.ChatCompletion(**envelope, choices=[choice], usage=reply.usage(), trace=traced)

    @app.post("/v1/completions", dependencies=auth, response_model=api.TextCompletion)
    async def completions(request: Request):
        body = await read_body(request, limits)
        req = api.parse_request(api.CompletionRequest, body, model_id, limits)
        options = req.options()
        ids = await asyncio.to_thread(
            server.engine.prompt_text, req.prompt, options["max_new_tokens"]
        )
        reply = Reply(server, ids, options, req.logprobs_wanted())
        envelope = {"id": f"cmpl-{reply.id}", "created": reply.created, "model": model_id}
        if req.stream:

            async def chunks():
                offset = 0
                async for piece, tokens in reply.pieces():
                    logprobs = reply.logprobs(tokens, offset)
                    offset += len(piece)
                    choice = api.TextChoice(text=piece, logprobs=logprobs)
                    yield api.TextCompletion(**envelope, choices=[choice])
                choice = api.TextChoice(text="", finish_reason=reply.row.finish_reason)
                yield api.TextCompletion(**envelope, choices=[choice])
                if req.include_usage:
                    yield api.TextCompletion(**envelope, choices=[], usage=reply.usage())

            return server.stream(_events(chunks()))
        text, tokens = await reply.text(request) or ("", [])
        finish, logprobs = reply.row.finish_reason or "stop", reply.logprobs(tokens, 0)
        choice = api.TextChoice(text=text, logprobs=logprobs, finish_reason=finish)
        return api.TextCompletion(**envelope, choices=[choice], usage=reply.usage())

    @app.post("/inside", dependencies=auth, include_in_schema=False)
    async def inside(request: Request) -> api.InsideToken:
        """The chat page's inside view: one token of a reply, looked at by the engine."""
        req = api.parse_inside(await read_body(request, limits), limits)
        return await asyncio.to_thread(inside_token, server.engine, req, limits.max_tokens)

    @app.get("/health")
    async def health() -> api.Health:
        decoder = server.decoder
        return api.Health(model=model_id, active=decoder.active, waiting=len(decoder.waiting))

    @app.get("/page.json")
    async def page_settings() -> api.PageSettings:
        return server.page

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(PAGE / "index.html"))

    @app.get("/{name}.js", include_in_schema=False)
    async def page_script(name: str):
        if name not in ("ui", "server"):  # a name from the URL never reaches the file system
            raise HTTPException(404)
        return FileResponse(str(PAGE / f"{name}.js"), media_type="text/javascript")

    return app


class Server:
    """A run served over HTTP: bound at once (so a bad --host or --port fails early), serving
    from `serve_forever()` until `shutdown()`."""

    def __init__(
        self,
        run: Run,
        host: str = HOST,
        port: int = PORT,
        *,
        api_key: str | None = None,
        limits: Limits | None = None,
        log_level: str = "warning",
    ):
        self.run, self.api_key, self.limits = run, api_key, limits or Limits()
        # The persona's name, as chat shows it; the folder's name for runs without one.
        self.model_id = (run.config.get("persona") or {}).get("name") or run.path.name
        self.created = int(time.time())
        from guppyforge.model.engine import BatchDecoder, Engine

        self.engine = Engine.from_run(run)
        self.decoder = BatchDecoder(self.engine, self.limits.max_batch, self.limits.max_waiting)
        self.page = _page_settings(run, self.model_id)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=2048)
        protocol = type("Protocol", (HeadTimeoutH11,), {"head_timeout": self.limits.head_timeout})
        config = uvicorn.Config(
            create_app(self),
            http=protocol,
            log_level=log_level,
            limit_concurrency=4 * (self.limits.max_batch + self.limits.max_waiting),
            timeout_graceful_shutdown=1,
        )
        self.uvicorn = uvicorn.Server(config)
        self.stopped = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def stream(self, events) -> EventSourceResponse:
        # A reader that stops reading for body_timeout seconds is dropped, freeing its row.
        return EventSourceResponse(events, sep="\n", ping=15, send_timeout=self.limits.body_timeout)

    def serve_forever(self) -> None:
        self.decoder.start()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.decoder.stop()
            self.stopped.set()

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        self.stopped.wait(10)

    def server_close(self) -> None:
        self.socket.close()


def make_server(run: Run, host: str = HOST, port: int = PORT, **options) -> Server:
    """A server for `run`, bound but not yet serving: call `serve_forever()` (port 0: any free)."""
    return Server(run, host, port, **options)


def _page_settings(run: Run, model_id: str) -> api.PageSettings:
    """page.json: the persona's name, summary and first message (its card's), for the chat page."""
    try:
        from guppyforge.cards import page_identity
        from guppyforge.persona.schema import load_persona

        return api.PageSettings(model=model_id, **page_identity(load_persona(run.persona_path)))
    except (GuppyError, OSError):  # no persona.yaml, or one this version cannot read
        return api.PageSettings(model=model_id, name=model_id, summary="", first_message="")


def serve(
    run_dir,
    host: str = HOST,
    port: int = PORT,
    device: str = "auto",
    api_key: str | None = None,
    limits: Limits | None = None,
) -> None:
    """`guppyforge serve`: load the run and answer requests until Ctrl+C."""
    check_exposure(host, api_key)
    from guppyforge.model.run import load_run, pick_device

    run = load_run(run_dir, device=str(pick_device(device)))
    try:
        server = make_server(run, host, port, api_key=api_key, limits=limits, log_level="info")
    except OSError as e:  # port taken, address not on this machine, no permission...
        raise GuppyError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror})."
        ) from None
    page = server.url.removesuffix("/v1") + "/"
    print(
        f"serving {server.model_id} at {server.url} (chat page: {page}; Ctrl+C to stop)", flush=True
    )
    try:
        server.serve_forever()  # uvicorn stops on Ctrl+C (SIGINT) and SIGTERM
    finally:
        server.server_close()
