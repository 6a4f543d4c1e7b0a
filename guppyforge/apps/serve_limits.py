"""What one request may ask of `guppyforge serve`, and where it may listen: the one home of
the server's defaults. `guppyforge serve`'s options are built from these fields (apps/cli_model.py),
as train's are from TrainOptions; nothing here needs the serve extra, so `serve --help` works
without it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields

from guppyforge.errors import GuppyError

HOST, PORT = "127.0.0.1", 8000  # this machine only: beyond it, a key is required


def limit(default, help: str):
    """A Limits field: its default and its `guppyforge serve --max-...` help, written once."""
    return field(default=default, metadata={"help": help})


@dataclass
class Limits:
    """What one request may ask of the server; each is a `guppyforge serve` option."""

    max_body: int = limit(1 << 20, "Largest request body, in bytes.")  # a conversation: a few KB
    max_messages: int = limit(256, "Most messages in one request.")
    # All messages' text together: bounds the tokenizing work of one request.
    max_prompt_chars: int = limit(32_000, "Most characters of text in one request's messages.")
    max_tokens: int = limit(512, "Longest reply a request may ask for.")  # the context cuts earlier
    max_batch: int = limit(32, "Replies decoded together.")
    max_waiting: int = limit(256, "Replies waiting for a free batch row; more get a 503.")
    # One --timeout sets both: a stalled client gets a 408 (body) or a closed connection (head).
    body_timeout: float = 10.0  # seconds to receive a request body
    head_timeout: float = 10.0  # seconds to receive a request's head


OPTIONS = [f for f in fields(Limits) if f.metadata.get("help")]  # one `--max-...` option each
TIMEOUT = Limits.body_timeout  # `--timeout`'s default


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key (checked before the model loads)."""
    if not is_loopback(host) and not api_key:
        raise GuppyError(
            f"--host {host}: serving beyond this machine needs --api-key KEY (or GUPPYFORGE_API_KEY); clients send it as 'Authorization: Bearer KEY'."
        )
