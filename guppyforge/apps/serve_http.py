"""The guards around each request `guppyforge serve` answers: who may ask (the bearer key), how
big a body may be, and how long a client may take to send it and its head (their limits:
serve_limits.py).
"""

from __future__ import annotations

import asyncio
import hmac

import h11
from fastapi import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from guppyforge.apps.openai_api import ApiError
from guppyforge.apps.serve_limits import Limits

# uvicorn parses HTTP and FastAPI routes; what they leave to the application is here: a bearer
# key, a cap and a deadline on the body (uvicorn waits for a body for ever), and a deadline on the
# request head (uvicorn waits for that for ever too), so a stalled client costs one idle socket
# for a few seconds and never holds anything another request needs. A request refused before its
# body is in (413, 408) is answered, then the connection lingers to read and drop what the client
# still sends: closing on unread data makes the kernel reset the connection, and the client would
# see "connection reset" or "broken pipe" instead of the answer.


def check_key(api_key: str | None):
    """A FastAPI dependency: with a key set, every request must carry it as a bearer token."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: how long the comparison takes says nothing about the key.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), api_key.encode()):
            message = "Incorrect API key provided: send 'Authorization: Bearer KEY' with the server's --api-key."
            raise ApiError(401, message, None, "invalid_api_key")

    return check


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, at most `limits.max_body` bytes, received within `limits.body_timeout`."""
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if declared is None and not chunked:
        raise ApiError(411, "A Content-Length header is required.", None, "length_required")
    too_big = (
        f"The request body is over this server's limit of {limits.max_body} bytes (--max-body)."
    )
    if declared is not None and int(declared) > limits.max_body:  # h11 checked it is a number
        raise ApiError(413, too_big, None, "body_too_large")  # the body is never read
    body = await _receive(request, limits.max_body, limits.body_timeout)
    if body is None:
        raise ApiError(413, too_big, None, "body_too_large")
    return body


async def _receive(request: Request, cap: int, timeout: float) -> bytes | None:
    """Up to `cap` bytes of body (None past it); ApiError 408 when it does not come in time."""
    parts, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                return
            parts.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        message = f"The request body did not arrive within {timeout:g} s (--timeout)."
        raise ApiError(408, message, None, "request_timeout") from None
    return None if size > cap else b"".join(parts)


LINGER_BYTES = 128 << 20  # what a refused client may still send before it is cut off


class _Lingering:
    """A connection's transport whose close() waits for the client's unsent body: the answer
    goes out, then a FIN, and what still arrives is dropped until the client closes, has sent
    LINGER_BYTES, or the head timeout passes."""

    def __init__(self, transport, protocol: HeadTimeoutH11) -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingered is not None or self._transport.is_closing()

    def close(self) -> None:
        p, transport = self._protocol, self._transport
        mid_body = p.conn.their_state is h11.SEND_BODY
        if p.lingered is not None or not mid_body or not transport.can_write_eof():
            transport.close()
            return
        p.lingered = 0
        transport.write_eof()  # after the answer already written
        transport.resume_reading()  # flow control may have paused it
        p.loop.call_later(p.head_timeout, transport.close)


class HeadTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 connection, closed when a request's head does not arrive in time.

    A timer starts when the connection opens and again after each response; it is cancelled
    once h11 has read a whole request head. uvicorn's own keep-alive timer covers an idle
    connection only until its first byte, so a client that sends half a head would otherwise
    hold the socket for ever.
    """

    head_timeout = 10.0
    lingered: int | None = None  # bytes dropped since a refusal; None: not lingering

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = _Lingering(transport, self)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        if self.lingered is not None:  # a refused request's body: dropped, never parsed
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport._transport.close()
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def eof_received(self) -> bool | None:
        if self.lingered is not None:
            self.transport._transport.close()  # the client has sent all it will: it has the answer
        return super().eof_received()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
