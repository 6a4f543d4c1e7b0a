"""The OpenAI chat-completions request, checked field by field.

`parse_chat_request` turns a decoded JSON body into a `ChatRequest` or raises `RequestError`
naming the first bad field, which the server sends back as a 4xx in OpenAI's error shape,
`{"error": {"message", "type", "param", "code"}}`, so clients raise their usual exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_BODY = 1 << 20  # 1 MiB: a whole conversation at this context is a few KB
ROLES = ("system", "developer", "user", "assistant")


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
    trace: bool = False  # ours, not OpenAI's: add where the reply came from (apps/trace.py)
    stop: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # keyword arguments for Engine.stream


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
    trace = body.get("trace", False)
    if not isinstance(trace, bool):
        raise RequestError(400, "'trace' must be true or false.", "trace")
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
        trace=trace,
        stop=stop,
        # Fields left out keep chat's defaults (temperature 0.7, 64 new tokens).
        options={k: v for k, v in options.items() if v is not None},
    )
