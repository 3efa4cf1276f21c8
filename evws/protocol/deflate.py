"""permessage-deflate (RFC 7692), without I/O: negotiation and the codec.

Two jobs, kept apart so each can be tested alone:

* **Negotiation** (RFC 7692 section 7.1) turns ``Sec-WebSocket-Extensions``
  values into agreed :class:`DeflateParams`: :func:`negotiate_server` picks
  the first acceptable offer of a client, :func:`client_offer` writes a
  client's offer and :func:`accept_client` checks the server's answer to it.
  An offer the server cannot honour is *declined* (7.1: the server answers
  without it, the connection goes on uncompressed); a bad answer to a client
  is fatal (7.1: the client "MUST _Fail the WebSocket Connection_").
* **The codec** (:class:`PerMessageDeflate`, RFC 7692 section 7.2) compresses
  outgoing messages and inflates incoming ones for one side of one
  connection. ``WebSocketProtocol`` drives it frame by frame.

Why inflation is bounded here and not after the fact: a few hundred
kilobytes of compressed zeros inflate to gigabytes, so the size limit
(``max_payload_size``) must stop zlib *while* it inflates. ``decompress`` is
asked for at most one byte more than the message may still grow by; if it
delivers that byte, the message is too big (1009) and the rest of the input
(``unconsumed_tail``) is never inflated.

zlib quirk: ``compressobj(wbits=-8)`` is refused, a raw window of 8 bits is not available.
A window of 9 is used instead when 8 was agreed for our side: zlib never
emits a distance beyond ``2**wbits - 262``, which for 9 bits (250) still fits
the 256-byte window the peer inflates with.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import HandshakeError, PayloadTooBig, ProtocolError
from .http import TOKEN, quoted_string, split_header_list

__all__ = [
    "EXTENSION_NAME",
    "DeflateConfig",
    "DeflateParams",
    "PerMessageDeflate",
    "parse_extensions",
    "negotiate_server",
    "client_offer",
    "accept_client",
    "params_from_response",
]

EXTENSION_NAME = "permessage-deflate"

# 7.2.1: the 4 octets a sync flush ends with, stripped when sending and
# appended again before inflating.
_TAIL = b"\x00\x00\xff\xff"

# RFC 7230 token; RFC 6455 9.1 asks quoted parameter values to unescape to one.
# 7.1.2: "a decimal integer value without leading zeroes between 8 and 15".
_WINDOW_BITS = re.compile(r"(?:8|9|1[0-5])")

_PARAM_NAMES = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


@dataclass(frozen=True)
class DeflateConfig:
    """What one end is willing to agree to; the same class serves both ends.

    On a server: ``server_no_context_takeover`` always resets our compressor
    per message; ``client_no_context_takeover`` asks the client to do so;
    ``server_max_window_bits`` caps our compression window;
    ``client_max_window_bits`` caps the client's (only possible when the
    client said it supports that parameter).

    On a client: each parameter set here is put in the offer and must be
    honoured by the server's answer; ``client_max_window_bits=None`` still
    tells the server that we support the parameter.

    Window sizes are 8..15 (``None``: 15, zlib's maximum). The compressor
    holds about ``2**(wbits+2) + 2**(mem_level+9)`` bytes (~260 KiB at the
    defaults) and the decompressor ``2**wbits``; lower both to save memory per
    connection (``websockets`` uses 12 and mem_level 5).

    ``level`` and ``mem_level`` only tune our own compressor; they are never
    negotiated. Every message is compressed, however small: RFC 7692 would let
    us send some uncompressed, but one rule is simpler and the peer's
    expectations (e.g. Autobahn's) are met.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    level: int = zlib.Z_DEFAULT_COMPRESSION
    mem_level: int = 8

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(self, name)
            if bits is not None and not (isinstance(bits, int) and 8 <= bits <= 15):
                raise ValueError(f"{name} must be None or 8..15, not {bits!r}")
        if not -1 <= self.level <= 9:
            raise ValueError(f"level must be -1..9, not {self.level!r}")
        if not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be 1..9, not {self.mem_level!r}")


@dataclass(frozen=True)
class DeflateParams:
    """The agreed parameters of one connection (7.1), the same for both ends.

    ``level`` and ``mem_level`` are local settings carried along for the
    codec; they are not part of the agreement.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    level: int = zlib.Z_DEFAULT_COMPRESSION
    mem_level: int = 8


# ------------------------------------------------------------------- parsing


def _unquote(value: str) -> str | None:
    """A parameter value, unquoted; None if it is not a (quoted) token."""
    if value.startswith('"'):
        inner, end = quoted_string(value, 0)
        if inner is None or end != len(value):
            return None
        value = inner
    # 9.1: "the value after quoted-string unescaping MUST conform to the
    # 'token' ABNF."
    return value if TOKEN.fullmatch(value) else None


def _parse_extension(text: str) -> tuple[str, list[tuple[str, str | None]]] | None:
    """``name; p1; p2=v`` -> (name, [(p1, None), (p2, v)]); None if malformed."""
    # A quoted value never holds ';' once it is a token, so a plain split
    # is enough; a quoted ';' makes the value fail the token check anyway.
    pieces = [piece.strip() for piece in text.split(";")]
    name = pieces[0]
    if not TOKEN.fullmatch(name):
        return None
    params: list[tuple[str, str | None]] = []
    for piece in pieces[1:]:
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not TOKEN.fullmatch(key):
            return None
        if eq:
            unquoted = _unquote(value.strip())
            if unquoted is None:
                return None
            params.append((key, unquoted))
        else:
            params.append((key, None))
    return name, params


def parse_extensions(
    values: str | list[str] | tuple[str, ...],
) -> list[tuple[str, list[tuple[str, str | None]]] | None]:
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 9.1).

    Accepts one header value or several (``Request.extensions``, already
    split on commas, is fine too). Returns one entry per extension in order:
    ``(name, [(param, value_or_None), ...])``, or ``None`` where an entry is
    malformed, so a server can skip it and a client can refuse it.
    """
    if isinstance(values, str):
        values = [values]
    return [_parse_extension(item) for item in split_header_list(values)]


def _deflate_params(params: list[tuple[str, str | None]]) -> dict[str, bool | int | None] | None:
    """Validate permessage-deflate parameters (7.1); None if any is invalid.

    Returns a dict with the four names: no-context-takeover flags as bools,
    window bits as an int, ``True`` (client_max_window_bits without a value),
    or ``None`` (absent).
    """
    seen: dict[str, bool | int | None] = dict.fromkeys(_PARAM_NAMES)
    for key, value in params:
        key = key.lower()
        # 7.1: a duplicate or unknown parameter makes the offer invalid.
        if key not in seen or seen[key] is not None:
            return None
        if key.endswith("no_context_takeover"):
            if value is not None:
                return None
            seen[key] = True
        elif value is None:
            if key != "client_max_window_bits":
                return None
            seen[key] = True
        elif _WINDOW_BITS.fullmatch(value):
            seen[key] = int(value)
        else:
            return None
    return seen


# ---------------------------------------------------------------- negotiation


def _agreed(server_nct: bool, client_nct: bool, server_bits: int | None,
            client_bits: int | None, config: DeflateConfig) -> DeflateParams:
    """The one place agreed parameters are made: absent window bits mean 15
    (7.1.2), and our local codec settings come along."""
    return DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=15 if server_bits is None else server_bits,
        client_max_window_bits=15 if client_bits is None else client_bits,
        level=config.level,
        mem_level=config.mem_level,
    )


def negotiate_server(
    offers: str | list[str] | tuple[str, ...], config: DeflateConfig | None = None
) -> tuple[str | None, DeflateParams | None]:
    """Answer a client's extension offers (RFC 7692 7.1, server side).

    Args:
        offers: the request's ``Sec-WebSocket-Extensions`` values, e.g.
            ``request.extensions``.
        config: what this server allows (default :class:`DeflateConfig()`).

    Returns:
        ``(response_header_value, params)`` for the first acceptable
        permessage-deflate offer, or ``(None, None)`` if there is none. Other
        extensions, malformed offers and offers with invalid or duplicate
        parameters are declined, never an error (7.1: "the server declines").
    """
    if config is None:
        config = DeflateConfig()
    for entry in parse_extensions(offers):
        if entry is None or entry[0].lower() != EXTENSION_NAME:
            continue
        offer = _deflate_params(entry[1])
        if offer is None:
            continue
        answer = _answer_offer(offer, config)
        if answer is not None:
            return answer
    return None, None


def _answer_offer(offer: dict[str, Any], config: DeflateConfig) -> tuple[str, DeflateParams] | None:
    # 7.1.1.1: an offered server_no_context_takeover is accepted by echoing
    # it; a server may also use it unasked.
    server_nct = bool(offer["server_no_context_takeover"]) or config.server_no_context_takeover
    # 7.1.1.2: the client says it will not take over context; the server may
    # also ask for it unasked. Echoing an offered one states the agreement.
    client_nct = bool(offer["client_no_context_takeover"]) or config.client_no_context_takeover
    # 7.1.2.1: answer with the offered value or a smaller one; a server may
    # also limit its own window unasked.
    server_bits = offer["server_max_window_bits"]
    if config.server_max_window_bits is not None:
        if server_bits is None or server_bits > config.server_max_window_bits:
            server_bits = config.server_max_window_bits
    # 7.1.2.2: only when the client offered the parameter may the answer
    # carry it, with a value no larger than the offered one (if any).
    client_offered = offer["client_max_window_bits"]
    client_bits = None
    if client_offered is not None:
        if client_offered is not True:
            client_bits = client_offered
        if config.client_max_window_bits is not None:
            if client_bits is None or client_bits > config.client_max_window_bits:
                client_bits = config.client_max_window_bits
    params = _agreed(server_nct, client_nct, server_bits, client_bits, config)
    # Values of 15 are written when they were asked for: the offer named them,
    # so the answer must (7.1.2.1: "accepts ... by including").
    parts = [EXTENSION_NAME]
    if server_nct:
        parts.append("server_no_context_takeover")
    if client_nct:
        parts.append("client_no_context_takeover")
    if server_bits is not None:
        parts.append(f"server_max_window_bits={server_bits}")
    if client_bits is not None:
        parts.append(f"client_max_window_bits={client_bits}")
    return "; ".join(parts), params


def client_offer(config: DeflateConfig | None = None) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends (7.1).

    ``client_max_window_bits`` is always offered, without a value when the
    config sets none, to tell the server we honour its limit (7.1.2.2).
    """
    if config is None:
        config = DeflateConfig()
    parts = [EXTENSION_NAME]
    if config.server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if config.client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if config.server_max_window_bits is not None:
        parts.append(f"server_max_window_bits={config.server_max_window_bits}")
    if config.client_max_window_bits is not None:
        parts.append(f"client_max_window_bits={config.client_max_window_bits}")
    else:
        parts.append("client_max_window_bits")
    return "; ".join(parts)


def accept_client(
    value: str | list[str] | None, config: DeflateConfig | None = None
) -> DeflateParams | None:
    """Check a server's ``Sec-WebSocket-Extensions`` answer to :func:`client_offer`.

    Args:
        value: the answer's header value(s), ``None`` if there was none.
        config: the config the offer was made from.

    Returns:
        The agreed parameters, or ``None`` when the server declined.

    Raises:
        HandshakeError: the answer names another extension or several, or a
            parameter that is malformed, duplicated, not offered, or does not
            honour the offer (7.1: the client "MUST _Fail the WebSocket
            Connection_"). ``status`` is 101, the status received.
    """
    if config is None:
        config = DeflateConfig()
    if value is None or (not isinstance(value, str) and not value):
        return None
    entries = parse_extensions(value)
    if not entries:
        return None

    def fail(message: str) -> HandshakeError:
        return HandshakeError(f"bad Sec-WebSocket-Extensions answer: {message}", status=101)

    if len(entries) > 1:
        raise fail("more than one extension, only permessage-deflate was offered")
    entry = entries[0]
    if entry is None:
        raise fail(f"malformed value {value!r}")
    name, raw = entry
    if name.lower() != EXTENSION_NAME:
        raise fail(f"extension {name!r} was not offered")
    answer = _deflate_params(raw)
    if answer is None:
        raise fail(f"invalid or duplicate parameters in {value!r}")
    if answer["client_max_window_bits"] is True:
        raise fail("client_max_window_bits needs a value in an answer")
    if config.server_no_context_takeover and not answer["server_no_context_takeover"]:
        raise fail("server_no_context_takeover was asked for but not agreed")
    server_bits = answer["server_max_window_bits"]
    if config.server_max_window_bits is not None:
        if server_bits is None:
            raise fail("server_max_window_bits was asked for but not agreed")
        if server_bits > config.server_max_window_bits:
            raise fail(f"server_max_window_bits={server_bits} exceeds the offered "
                       f"{config.server_max_window_bits}")
    client_bits = answer["client_max_window_bits"]
    if client_bits is None:
        client_bits = config.client_max_window_bits
    elif config.client_max_window_bits is not None and client_bits > config.client_max_window_bits:
        raise fail(f"client_max_window_bits={client_bits} exceeds the offered "
                   f"{config.client_max_window_bits}")
    return _agreed(bool(answer["server_no_context_takeover"]),
                   bool(answer["client_no_context_takeover"]) or config.client_no_context_takeover,
                   server_bits, client_bits, config)


def params_from_response(value: str | list[str] | None,
                         config: DeflateConfig | None = None) -> DeflateParams | None:
    """Read agreed parameters back from a server's own answer, leniently.

    For a server whose handshake callback wrote a raw response: what its
    ``Sec-WebSocket-Extensions`` header says is what is in effect. Anything
    but one valid permessage-deflate entry gives ``None`` (no compression).
    """
    if config is None:
        config = DeflateConfig()
    if not value:
        return None
    entries = parse_extensions(value)
    deflate = [e for e in entries if e is not None and e[0].lower() == EXTENSION_NAME]
    if len(deflate) != 1:
        return None
    answer = _deflate_params(deflate[0][1])
    if answer is None or answer["client_max_window_bits"] is True:
        return None
    server_bits = answer["server_max_window_bits"]
    client_bits = answer["client_max_window_bits"]
    return _agreed(bool(answer["server_no_context_takeover"]),
                   bool(answer["client_no_context_takeover"]), server_bits, client_bits, config)


# ---------------------------------------------------------------------- codec


class PerMessageDeflate:
    """Compress what one side sends and inflate what it receives (RFC 7692 7.2).

    Args:
        params: the agreed parameters.
        is_server: which side we are: it decides which half of ``params``
            rules our compressor and which the peer's.
    """

    __slots__ = (
        "_send_bits", "_send_reset", "_recv_bits", "_recv_reset", "_level",
        "_mem_level", "_compressor", "_decompressor", "_budget", "_sending",
    )

    def __init__(self, params: DeflateParams, is_server: bool) -> None:
        if is_server:
            send_bits, self._send_reset = params.server_max_window_bits, params.server_no_context_takeover
            recv_bits, self._recv_reset = params.client_max_window_bits, params.client_no_context_takeover
        else:
            send_bits, self._send_reset = params.client_max_window_bits, params.client_no_context_takeover
            recv_bits, self._recv_reset = params.server_max_window_bits, params.server_no_context_takeover
        # zlib refuses a raw window of 8 for compressing: see the module doc.
        self._send_bits = max(send_bits, 9)
        self._recv_bits = recv_bits
        self._level = params.level
        self._mem_level = params.mem_level
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._budget: int | None = None
        self._sending = False

    # -- sending

    def compress(self, data: bytes | bytearray | memoryview, final: bool = True) -> bytes:
        """Compress the next part of the message being sent.

        A whole message is one call; a fragmented one is one call per frame,
        the last with ``final=True``. Every part is flushed (Z_SYNC_FLUSH) so
        the peer can inflate each frame as it comes; the 4-octet tail is only
        stripped from the last one (7.2.1).
        """
        compressor = self._compressor
        if compressor is None or (self._send_reset and not self._sending):
            # 7.2.2 no_context_takeover: a fresh window for every message.
            compressor = self._compressor = zlib.compressobj(
                self._level, zlib.DEFLATED, -self._send_bits, self._mem_level)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._sending = not final
        if not final:
            return out
        if out.endswith(_TAIL):
            return out[:-4]
        # Nothing since the last flush (an empty message, or an empty last
        # frame): an empty stored block without its tail, one 0x00 (7.2.3.6).
        return out or b"\x00"

    # -- receiving

    def start_message(self, limit: int | None) -> None:
        """Get ready to inflate a new message of at most ``limit`` bytes."""
        if self._decompressor is None or self._recv_reset:
            self._decompressor = zlib.decompressobj(-self._recv_bits)
        self._budget = limit

    def inflate(self, data: bytes) -> bytes:
        """Inflate the next piece of the message's payload.

        Raises:
            PayloadTooBig: the message inflates to more than the limit (1009);
                no more than one byte beyond it was ever produced.
            ProtocolError: the data is not valid DEFLATE (1002).
        """
        return self._inflate(data)

    def finish_message(self) -> bytes:
        """Inflate the rest of the message: the appended tail (7.2.2)."""
        out = self._inflate(_TAIL)
        if self._decompressor is not None and self._decompressor.eof:
            # A block with BFINAL set ended the stream (7.2.3.3): the next
            # message needs a new decompressor.
            self._decompressor = None
        return out

    def _inflate(self, data: bytes) -> bytes:
        decompressor = self._decompressor
        if decompressor is None:
            raise RuntimeError("start_message() first")
        if not data:
            return b""
        if decompressor.eof:
            # After a block with BFINAL set, the rest of the message is
            # ignored: 7.2.3.4 sends an empty stored block's header there so
            # that the appended tail still parses. Dropped, never buffered.
            return b""
        budget = self._budget
        try:
            if budget is None:
                out = decompressor.decompress(data)
            else:
                out = decompressor.decompress(data, budget + 1)
                # decompress() stops at max_length, leaving the input it did
                # not reach in unconsumed_tail: only then can out be full.
                if len(out) > budget:
                    raise PayloadTooBig("message over the size limit once inflated")
                self._budget = budget - len(out)
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}") from None
        return out
