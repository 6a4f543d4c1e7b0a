"""OpenAI's request and response shapes (and the chat page's), as typed (pydantic) models.

A request body is parsed and checked in one go (`parse_request`): strict types (`"temperature":
"hot"` or `true` is refused, never coerced), no unknown fields, and every parameter either
honoured or refused with a 4xx in OpenAI's error shape, `{"error": {"message", "type", "param",
"code"}}`, so clients raise their usual exceptions. Nothing a client sends is ignored silently,
except plain metadata (`user`, `metadata`, `service_tier`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guppyforge.defaults import MAX_NEW_TOKENS, TEMPERATURE, TOP_K

if TYPE_CHECKING:
    from guppyforge.apps.serve_limits import Limits


class ApiError(Exception):
    """A client mistake (or a busy server): a response in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


# --- requests ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # checked below, so an error names the message rather than a union arm
    name: str | None = None  # OpenAI's participant name: metadata, not shown to the model

    @model_validator(mode="after")
    def _text(self) -> Message:
        c = self.content
        if isinstance(c, list) and all(isinstance(p, dict) for p in c):
            c = "".join(TextPart.model_validate(p).text for p in c)
        if not isinstance(c, str):
            raise ValueError("content must be a string or a list of text parts")
        self.content = c
        return self

    def plain(self) -> dict:
        """As the engine takes it; "developer" is OpenAI's newer name for the system prompt."""
        return {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.content,
        }


class StreamOptions(_Strict):
    include_usage: bool = False  # anything else in it is refused (extra="forbid")


# Parameters OpenAI clients may send that change what this model cannot do: accepted only at
# the value that means "off", refused otherwise, never ignored.
OFF_ONLY: dict[str, tuple] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "store": (None, False),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


class _Sampling(_Strict):
    """What both endpoints share: the sampling options and the model's name."""

    model: str | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's: vLLM's and llama.cpp's extension
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch's generator takes
    stop: str | list[str] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None

    @field_validator("n")
    @classmethod
    def _one(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stop = [stop] if isinstance(stop, str) else stop or []
        if len(stop) > 4 or not all(stop):
            raise ValueError("stop must be a string or a list of up to 4 non-empty strings")
        return stop

    _cap: int = MAX_NEW_TOKENS  # the server's --max-tokens, set by parse_request

    def reply_cap(self) -> int | None:
        return self.max_tokens

    def logprobs_wanted(self) -> int | None:
        """How many candidates each token's log-probability comes with; None: not asked."""
        return None

    def options(self) -> dict:
        """Keyword arguments for the decoder; fields left out keep chat's defaults."""
        options = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.reply_cap() or min(MAX_NEW_TOKENS, self._cap),
            "seed": self.seed,
            "stop": self.stop,
        }
        return {k: v for k, v in options.items() if v is not None}

    @property
    def include_usage(self) -> bool:  # OpenAI's last chunk with the usage, when streaming
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    trace: bool = False  # ours, not OpenAI's: add where the reply came from (evaluate/trace.py)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)  # OpenAI's range
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    modalities: Any = None
    store: Any = None

    def reply_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def plain_messages(self) -> list[dict]:
        return [m.plain() for m in self.messages]

    def text_size(self) -> int:
        return sum(len(m.content) for m in self.messages)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's range
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    @field_validator("prompt")
    @classmethod
    def _single(cls, prompt):
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("only one prompt per request is supported")
        return prompt if isinstance(prompt, str) else prompt[0]

    def text_size(self) -> int:
        return len(self.prompt)

    def logprobs_wanted(self) -> int | None:
        return self.logprobs


class InsideRequest(_Strict):
    """Ours, for the chat page's inside view (POST /inside): one token of a finished reply."""

    messages: list[Message] = Field(min_length=1)  # the conversation the reply answers
    reply: list[list[int]] = Field(min_length=1)  # the reply's tokens, as their bytes
    index: int = Field(ge=0)  # which of them to look inside
    top: int = Field(10, ge=1, le=20)  # candidates listed by name

    def text_size(self) -> int:
        return sum(len(m.content) for m in self.messages)


def _param(loc: tuple) -> str | None:
    """pydantic's error location as OpenAI names a parameter: messages[0].role."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]") or "[" in str(part):
            break  # the arm of a union that failed: the parameter is what comes before
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _validate(kind: type[_Strict], body: bytes):
    try:
        # pydantic parses JSON in Rust with a nesting limit: a 100,000-deep array is a 400.
        req = kind.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        param = _param(err["loc"])
        if err["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param) from None
        where = f"'{param}': " if param else "The request body: "
        raise ApiError(400, where + err["msg"], param) from None
    return req


def _check_size(req, limits: Limits) -> None:
    if hasattr(req, "messages") and len(req.messages) > limits.max_messages:
        message = f"'messages' holds {len(req.messages)} messages; this server's limit is {limits.max_messages} (--max-messages)."
        raise ApiError(400, message, "messages", "too_many_messages")
    if req.text_size() > limits.max_prompt_chars:
        param = "prompt" if isinstance(req, CompletionRequest) else "messages"
        message = f"The prompt is {req.text_size()} characters; this server's limit is {limits.max_prompt_chars} (--max-prompt-chars)."
        raise ApiError(400, message, param, "prompt_too_long")


def parse_request(kind: type[_Sampling], body: bytes, model_id: str, limits: Limits):
    """A checked request of `kind` from raw JSON bytes; ApiError names the first bad field."""
    req = _validate(kind, body)
    for name, allowed in OFF_ONLY.items():
        if name in kind.model_fields and getattr(req, name) not in allowed:
            say = "leave it out" if len(allowed) == 1 else f"send {allowed[-1]!r} or leave it out"
            message = f"'{name}' is not supported by this server ({say})."
            raise ApiError(400, message, name, "unsupported_parameter")
    if getattr(req, "top_logprobs", None) and not req.logprobs:
        message = "'top_logprobs' needs 'logprobs': true."
        raise ApiError(400, message, "top_logprobs")
    if req.model not in (None, model_id):
        message = f"The model '{req.model}' does not exist; this server has '{model_id}'."
        raise ApiError(404, message, "model", "model_not_found")
    if req.stream_options is not None and not req.stream:
        message = "'stream_options' is only allowed when 'stream' is true."
        raise ApiError(400, message, "stream_options")
    _check_size(req, limits)
    if (cap := req.reply_cap()) is not None and cap > limits.max_tokens:
        param = (
            "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        )
        message = f"'{param}' is {cap}; this server's limit is {limits.max_tokens} (--max-tokens)."
        raise ApiError(400, message, param, "max_tokens_too_large")
    req._cap = limits.max_tokens
    return req


def parse_inside(body: bytes, limits: Limits) -> InsideRequest:
    """A checked POST /inside request: the token exists, the conversation is within limits."""
    req = _validate(InsideRequest, body)
    if req.index >= len(req.reply):
        message = f"'index' is {req.index}; the reply has {len(req.reply)} tokens."
        raise ApiError(400, message, "index")
    if not all(0 < len(t) <= 64 and all(0 <= b < 256 for b in t) for t in req.reply):
        raise ApiError(400, "'reply': each token is a list of 1 to 64 byte values.", "reply")
    if len(req.reply) > limits.max_tokens:
        message = f"'reply' has {len(req.reply)} tokens; this server's limit is {limits.max_tokens} (--max-tokens)."
        raise ApiError(400, message, "reply")
    _check_size(req, limits)
    return req


# --- responses ---------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "guppyforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    bytes: list[int]  # a token may be part of a character: its bytes say exactly which
    logprob: float  # at temperature 1, before sampling's temperature, top-k and top-p


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]  # the likeliest tokens at this position, best first


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class TextLogprobs(BaseModel):  # the legacy completions' form: parallel lists
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


def token_entry(tokenizer, token: int, logprob: float) -> dict:
    """A token as OpenAI's logprobs write it: its text, its bytes, its log-probability."""
    from guppyforge.model.tokenizer import token_bytes

    text = tokenizer.decode([token], skip_special_tokens=False)
    return {"token": text, "bytes": list(token_bytes(tokenizer, token)), "logprob": logprob}


def chat_logprobs(tokenizer, tokens: list) -> ChoiceLogprobs:
    """OpenAI's chat form of [(token, logprob, [(candidate, logprob), ...]), ...]."""
    content = []
    for token, logprob, top in tokens:
        entry = token_entry(tokenizer, token, logprob)
        candidates = [TopLogprob(**token_entry(tokenizer, *c)) for c in top]
        content.append(TokenLogprob(**entry, top_logprobs=candidates))
    return ChoiceLogprobs(content=content)


def text_logprobs(tokenizer, tokens: list, offset: int) -> TextLogprobs:
    """The legacy completions' form of the same, the tokens' text starting at `offset`."""
    texts = [token_entry(tokenizer, t, lp)["token"] for t, lp, _ in tokens]
    return TextLogprobs(
        tokens=texts,
        token_logprobs=[lp for _, lp, _ in tokens],
        top_logprobs=[
            {token_entry(tokenizer, *c)["token"]: c[1] for c in top} for *_, top in tokens
        ],
        text_offset=[offset + sum(map(len, texts[:i])) for i in range(len(texts))],
    )


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None  # with "logprobs": true
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    trace: dict | None = None  # with "trace": true in the request


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None  # the tokens of this chunk's delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    trace: dict | None = None  # on the last chunk with a choice, when asked for


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    active: int  # replies being decoded now
    waiting: int  # replies waiting for a free batch row


class InsideToken(TopLogprob):  # POST /inside answers with the token looked inside, and
    candidates: list[TopLogprob]  # the likeliest candidates, best first
    logprobs: list[float]  # every token's log-probability at temperature 1, by id: the page
    # rescales them with its own temperature and top-k, as sampling does
    context: list[str]  # every token before it, the prompt's included, as text
    attention: list[list[list[float]]]  # [layer][head][earlier token]: each row sums to 1


class PageSettings(BaseModel):  # page.json: who the chat page shows, what it asks and how
    backend: Literal["server"] = "server"  # apps/page/server.js; an export writes "browser"
    model: str
    name: str  # the display name
    summary: str
    first_message: str  # the greeting, shown and never sent
    temperature: float = TEMPERATURE
    top_k: int = TOP_K
