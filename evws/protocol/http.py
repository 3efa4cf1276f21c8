"""HTTP/1.1 message heads for the WebSocket opening handshake, sans I/O.

The opening handshake (RFC 6455 section 4) is an ordinary HTTP/1.1 request and
response, but only their *heads*: the request has no body and, once the 101
answer is sent, the bytes that follow are WebSocket frames. So this module
parses and writes heads only (RFC 7230 section 3), and it is strict:

* lines end with CRLF; a bare LF is refused instead of guessed at;
* obsolete line folding, whitespace before the colon and control or non-ASCII
  bytes in a field are refused (RFC 7230 3.2.4 allows a server to answer 400);
* the head is capped (``max_size``, default 16 KiB, answered with 431) and so
  is the number of fields (``max_headers``, answered with 400), and the cap is
  enforced *before* buffering, so an endless header costs at most ``max_size``
  bytes of memory.

The parsers are incremental: feed them whatever the socket produced. Each
``feed`` searches for the blank line only in the new bytes (plus the three
bytes before them, in case the CRLFCRLF straddles two reads), so a head that
trickles in one byte at a time is still parsed in linear time. Bytes that came
after the head (on a WebSocket server: the first frames) are kept in
``leftover``.

A parse failure raises :class:`~evws.errors.HandshakeError` carrying its HTTP
status and, for requests, a complete error response the server may write back.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Iterable, Iterator, Mapping, Union

from evws.errors import HandshakeError

__all__ = [
    "Headers",
    "HeadersLike",
    "RequestHead",
    "ResponseHead",
    "RequestHeadParser",
    "ResponseHeadParser",
    "serialize_request",
    "serialize_response",
    "http_error",
    "reason_phrase",
    "DEFAULT_MAX_SIZE",
    "TOKEN",
    "FIELD_VALUE",
    "quoted_string",
    "split_header_list",
    "DEFAULT_MAX_HEADERS",
]

DEFAULT_MAX_SIZE = 16384
DEFAULT_MAX_HEADERS = 128

_CRLF = b"\r\n"
_END_OF_HEAD = b"\r\n\r\n"

# The HTTP grammar, written once for every module of evws (headers,
# cookies, extension parameters):
# RFC 7230 3.2.6: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" /
# "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: ``TOKEN.fullmatch(text)``: is ``text`` an RFC 7230 token?
TOKEN = re.compile(_TCHAR + "+")
_TOKEN = re.compile(_TCHAR.encode() + b"+")
# RFC 7230 3.2: field-value = *( field-content / obs-fold ), restricted here to
# visible ASCII, SP and HTAB (obs-text, bytes 0x80-0xFF, is refused).
_FIELD_CHARS = r"[\t\x20-\x7e]"
#: ``FIELD_VALUE.fullmatch(text)``: may ``text`` be written as a field value?
FIELD_VALUE = re.compile(_FIELD_CHARS + "*")
_FIELD_VALUE = re.compile(_FIELD_CHARS.encode() + b"*")
# RFC 7230 3.1.1: request-line = method SP request-target SP HTTP-version CRLF
_REQUEST_LINE = re.compile(b"(" + _TCHAR.encode() + rb"+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
# RFC 7230 3.1.2: status-line = HTTP-version SP status-code SP reason-phrase
# CRLF. A missing final SP (empty reason) is tolerated: some servers omit it.
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e]*))?")
#: A header line evws may write: ``name: value``.
_HEADER_LINE = re.compile(_TCHAR + "+: " + _FIELD_CHARS + "*")
# The field lines of a head, each ending in CRLF: checked in one pass (the
# value may hold SP and HTAB, so the optional whitespace around it needs no
# separate pattern, and nothing can backtrack). A head it refuses is walked
# line by line to say what is wrong.
_FIELD_BLOCK = re.compile(b"(?:" + _TCHAR.encode() + b"+:" + _FIELD_CHARS.encode() + rb"*\r\n)*")
# One checked field line, decoded: name, then the value with its leading
# whitespace skipped (the trailing one is stripped after).
_FIELD_PAIR = re.compile("(" + _TCHAR + r"+):[ \t]*([^\r]*)\r\n")

HeadersLike = Union["Headers", Mapping[str, str], Iterable["tuple[str, str]"]]


def quoted_string(text: str, start: int) -> tuple[str | None, int]:
    """Read the RFC 7230 3.2.6 quoted-string that opens at ``text[start]`` (a ``"``).

    Returns ``(value, end)``: the unescaped value (``None`` if the closing
    quote is missing) and the index just after the string (``len(text)``
    when unterminated). The one walker of quoted strings: list splitting
    and extension parameters both use it.
    """
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 == n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    return None, n


def split_header_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated header values into stripped, non-empty items.

    RFC 7230 7: a list-valued field may be sent as several fields or as one
    comma-separated value, and empty elements are to be ignored. Commas inside
    a quoted string (an extension parameter may be quoted) do not split.
    """
    items: list[str] = []
    for value in values:
        if '"' not in value:
            # No quoted string (the usual case): a plain split is the same.
            items += value.split(",")
            continue
        begin = i = 0
        n = len(value)
        while i < n:
            char = value[i]
            if char == '"':
                i = quoted_string(value, i)[1]
                continue
            if char == ",":
                items.append(value[begin:i])
                begin = i + 1
            i += 1
        items.append(value[begin:])
    return [item for item in map(str.strip, items) if item]


class Headers:
    """HTTP header fields: case-insensitive, multi-valued and ordered.

    HTTP field names are case-insensitive (RFC 7230 3.2) and a field may occur
    several times (``Sec-WebSocket-Protocol``, ``Cookie``...), and the order of
    fields is kept because it is what the peer sent and what we will send.
    Names keep the spelling they were given.

    Iteration and ``len()`` see each distinct name once (as first spelled), like
    a mapping; :meth:`items` lists every field, repeats included.
    """

    # One flat list, name, value, name, value...: a kept handshake's headers
    # are held by every idle connection, and a (name, value) tuple per field
    # would cost 64 bytes more each (evws keeps an idle connection under 3 KiB).
    __slots__ = ("_fields",)

    def __init__(self, fields: HeadersLike | None = None) -> None:
        self._fields: list[str] = []
        if fields is None:
            return
        if isinstance(fields, Headers):
            self._fields = fields._fields[:]
        elif isinstance(fields, Mapping):
            for name, value in fields.items():
                self.add(name, value)
        else:
            for name, value in fields:
                self.add(name, value)

    def _indexes(self, name: str) -> Iterator[int]:
        """The positions in ``_fields`` of the names matching ``name``."""
        key = name.lower()
        fields = self._fields
        return (i for i in range(0, len(fields), 2) if fields[i].lower() == key)

    # get/get_all/__contains__ scan the flat list themselves instead of going
    # through _indexes: a handshake looks up about ten names, and a generator
    # per lookup was a measurable share of a connection's set-up (churn).

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of ``name``, or ``default`` if absent."""
        key = name.lower()
        fields = self._fields
        for i in range(0, len(fields), 2):
            if fields[i].lower() == key:
                return fields[i + 1]
        return default

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` in order (an empty list if absent)."""
        key = name.lower()
        fields = self._fields
        return [fields[i + 1] for i in range(0, len(fields), 2) if fields[i].lower() == key]

    def by_name(self) -> dict[str, list[str]]:
        """Every value of each name, keyed by the lower-case name, in one pass.

        For code that looks up many names at once (the handshake checks
        about ten): one scan of the fields instead of one per lookup.
        """
        grouped: dict[str, list[str]] = {}
        fields = self._fields
        for i in range(0, len(fields), 2):
            key = fields[i].lower()
            values = grouped.get(key)
            if values is None:
                grouped[key] = [fields[i + 1]]
            else:
                values.append(fields[i + 1])
        return grouped

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.remove(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        fields = self._fields
        return any(fields[i].lower() == key for i in range(0, len(fields), 2))

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any other field of the same name."""
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header name and value must be str, got {name!r}: {value!r}")
        self._fields += (name, value)

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one field.

        The new field takes the place of the first old one, so replacing a
        value does not reorder the head; if there was none it is appended.
        """
        first = next(self._indexes(name), None)
        if first is None:
            self.add(name, value)
            return
        self.remove(name)
        self._fields[first:first] = [name, value]

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (nothing happens if there is none)."""
        key = name.lower()
        fields = self._fields
        self._fields = [
            item for i in range(0, len(fields), 2) if fields[i].lower() != key
            for item in fields[i:i + 2]
        ]

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair, in order, repeats included."""
        fields = self._fields
        return list(zip(fields[::2], fields[1::2]))

    def _names(self) -> list[str]:
        seen: set[str] = set()
        names = []
        for field_name in self._fields[::2]:
            key = field_name.lower()
            if key not in seen:
                seen.add(key)
                names.append(field_name)
        return names

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def copy(self) -> Headers:
        """Return an independent copy."""
        return Headers(self)

    def __eq__(self, other: object) -> bool:
        # Equal when the same fields come in the same order, names compared
        # case-insensitively: that is what the two heads would mean on the wire.
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self.items()] == [
            (n.lower(), v) for n, v in other.items()
        ]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


@dataclass(frozen=True)
class RequestHead:
    """A parsed HTTP request head (RFC 7230 3.1.1): no body, no policy."""

    method: str
    target: str
    version: str
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True)
class ResponseHead:
    """A parsed HTTP response head (RFC 7230 3.1.2): no body, no policy."""

    version: str
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` ("" for an unknown code)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _check_field(name: str, value: str) -> None:
    # Refuse anything that would let a name or value end the line early: CR
    # or LF would inject a header (or a body), NUL confuses C parsers.
    # (A response header built from request data -- a percent-decoded query,
    # say -- is how response splitting gets in: it stops here, before
    # anything reaches the socket.)
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(f"HTTP header name and value must be str, got {name!r}: {value!r}")
    if not TOKEN.fullmatch(name):
        raise ValueError(f"invalid HTTP header name: {name!r}")
    if not FIELD_VALUE.fullmatch(value):
        raise ValueError(f"invalid HTTP header value for {name}: {value!r}")


def _fields_of(headers: HeadersLike) -> list[tuple[str, str]]:
    if isinstance(headers, Headers):
        return headers.items()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _serialize_head(start_line: str, headers: HeadersLike, body: bytes) -> bytes:
    lines = [start_line]
    check_line = _HEADER_LINE.fullmatch
    for name, value in _fields_of(headers):
        # One match of the whole line in the usual case; _check_field says
        # what is wrong otherwise.
        if type(name) is not str or type(value) is not str or not check_line(line := f"{name}: {value}"):
            _check_field(name, value)
            raise AssertionError("unreachable: _check_field refused nothing")  # pragma: no cover
        lines.append(line)
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("ascii") + bytes(body)


def serialize_response(
    status: int,
    headers: HeadersLike,
    body: bytes = b"",
    reason: str | None = None,
) -> bytes:
    """Write a complete HTTP/1.1 response: status line, fields, blank line, body.

    Args:
        status: a three-digit status code.
        headers: the fields to send, in order. Nothing is added: the caller
            decides about ``Content-Length`` and ``Connection``.
        body: bytes written after the head, verbatim.
        reason: the reason phrase; the standard one for ``status`` if None.

    Raises:
        ValueError: a status outside 100-999, or CR, LF, NUL (any control byte
            but HTAB) or non-ASCII in the reason or a field, or a field name
            that is not an RFC 7230 token. Checked before anything is built,
            so nothing half-written can reach a socket.
    """
    if not isinstance(status, int) or not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status: {status!r}")
    if reason is None:
        reason = reason_phrase(status)
    if not FIELD_VALUE.fullmatch(reason):
        raise ValueError(f"invalid HTTP reason phrase: {reason!r}")
    return _serialize_head(f"HTTP/1.1 {status} {reason}", headers, body)


def serialize_request(method: str, target: str, headers: HeadersLike) -> bytes:
    """Write an HTTP/1.1 request head (no body): request line, fields, blank line.

    Raises:
        ValueError: a method that is not a token, a target with spaces or
            control bytes, or a field that :func:`serialize_response` would
            refuse.
    """
    if not TOKEN.fullmatch(method):
        raise ValueError(f"invalid HTTP method: {method!r}")
    if not re.fullmatch(r"[\x21-\x7e]+", target):
        raise ValueError(f"invalid HTTP request target: {target!r}")
    return _serialize_head(f"{method} {target} HTTP/1.1", headers, b"")


def http_error(
    status: int,
    message: str,
    extra_headers: HeadersLike = (),
) -> HandshakeError:
    """Build (not raise) a HandshakeError with a ready plain-text response.

    The response closes the connection: after a failed handshake the stream
    is in an unknown state, so the server should not read another request.
    """
    body = message.encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    headers.extend(_fields_of(extra_headers))
    response = serialize_response(status, headers, body)
    return HandshakeError(message, status=status, response=response)


class _HeadParser:
    """Shared machinery: buffer the head, find its end, split it into lines."""

    # Whether errors carry a ready HTTP response (a server answering a bad
    # request) or not (a client reading a bad response has nobody to answer).
    _answer_errors = True

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        self.max_size = max_size
        self.max_headers = max_headers
        self.leftover = b""
        self._buffer = bytearray()
        self._head: RequestHead | ResponseHead | None = None
        self._error: HandshakeError | None = None

    @property
    def done(self) -> bool:
        """True once a head was parsed."""
        return self._head is not None

    def _fail(self, status: int, message: str) -> HandshakeError:
        if self._answer_errors:
            error = http_error(status, message)
        else:
            error = HandshakeError(message, status=status)
        self._error = error
        self._buffer = bytearray()
        return error

    def _feed(self, data: bytes) -> RequestHead | ResponseHead | None:
        if self._error is not None:
            raise self._error
        if self._head is not None:
            raise RuntimeError("the head was already parsed; its leftover is in .leftover")
        buffered = len(self._buffer)
        # Look at the new bytes plus the last 3 old ones (a CRLFCRLF may
        # straddle two reads), and never further than where a head of
        # max_size would have ended: a huge read is not searched (or kept)
        # beyond the limit.
        back = min(3, buffered)
        if buffered == 0 and type(data) is bytes and len(data) <= self.max_size + 4:
            window = data  # the usual case: the whole head in the first read
        else:
            window = bytes(self._buffer[buffered - back:]) + bytes(data[: self.max_size + 4 - buffered])
        end = window.find(_END_OF_HEAD)
        limit = end + 2 if end >= 0 else len(window)
        # Only the new bytes are searched; the byte before them is looked at
        # too, so a CRLF split across two reads is not mistaken for a bare LF.
        # Every CRLF holds one LF: any other LF is bare.
        if window.count(b"\n", back, limit) != window.count(_CRLF, max(back - 1, 0), limit):
            raise self._fail(400, "malformed HTTP head: lines must end with CRLF")
        if end < 0:
            if buffered + len(data) > self.max_size:
                raise self._fail(431, f"HTTP head larger than {self.max_size} bytes")
            self._buffer += data
            return None
        head_size = buffered - back + end + len(_END_OF_HEAD)
        if head_size > self.max_size:
            raise self._fail(431, f"HTTP head larger than {self.max_size} bytes")
        whole = data if buffered == 0 and type(data) is bytes else bytes(self._buffer) + bytes(data)
        self.leftover = whole[head_size:]
        self._buffer = bytearray()
        # The start line, then every field line with its CRLF.
        start_end = whole.find(_CRLF)
        head = self._parse(whole[:start_end], self._parse_fields(whole[start_end + 2:head_size - 2]))
        self._head = head
        return head

    def _parse(self, start_line: bytes, headers: Headers) -> RequestHead | ResponseHead:
        raise NotImplementedError

    def _parse_fields(self, block: bytes) -> Headers:
        if block.count(_CRLF) > self.max_headers:
            raise self._fail(400, f"too many HTTP header fields (more than {self.max_headers})")
        if not _FIELD_BLOCK.fullmatch(block):
            for line in block.split(_CRLF)[:-1]:
                error = self._field_error(line)
                if error is not None:
                    raise error
            raise AssertionError("unreachable: a refused head has a bad line")  # pragma: no cover
        fields: list[str] = []
        intern = sys.intern
        # Checked, so the block is ASCII: decoded once, not per value.
        for name, value in _FIELD_PAIR.findall(block.decode("ascii")):
            value = value.rstrip(" \t")
            # Interned: the same few names (and short values such as
            # "websocket", "13") would otherwise be held again by every
            # idle connection's kept Request (evws keeps an idle connection under 3 KiB).
            fields += (intern(name), intern(value) if len(value) <= 16 else value)
        headers = Headers()
        headers._fields = fields
        return headers

    def _field_error(self, line: bytes) -> HandshakeError | None:
        """The precise error for a bad field line (None for a good one)."""
        # RFC 7230 3.2.4: "A server that receives an obs-fold in a request
        # message [...] MUST either reject the message by sending a 400".
        if line[:1] in (b" ", b"\t"):
            return self._fail(400, "malformed HTTP header: obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon:
            return self._fail(400, f"malformed HTTP header (no colon): {_show(line)}")
        # RFC 7230 3.2.4: "No whitespace is allowed between the
        # header field-name and colon [...] MUST reject [...] with 400".
        if name[-1:] in (b" ", b"\t"):
            return self._fail(400, f"malformed HTTP header (space before colon): {_show(name)}")
        if not _TOKEN.fullmatch(name):
            return self._fail(400, f"malformed HTTP header name: {_show(name)}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            return self._fail(
                400, f"malformed HTTP header value for {name.decode('ascii')}: {_show(value)}"
            )
        return None


def _show(data: bytes) -> str:
    """A short printable rendering of peer bytes for an error message."""
    text = repr(data[:60])[2:-1]
    return text + ("..." if len(data) > 60 else "")


class RequestHeadParser(_HeadParser):
    """Incremental parser for one HTTP request head (the server side).

    Call :meth:`feed` with each chunk read; it returns None until the head is
    complete, then the :class:`RequestHead`. The bytes received after the head
    are in :attr:`leftover`. After a head (or an error) the parser is spent.
    """

    def feed(self, data: bytes) -> RequestHead | None:
        """Add received bytes; return the head once it is complete.

        Raises:
            HandshakeError: status 400 for a malformed head or too many fields,
                431 as soon as more than ``max_size`` bytes came without a
                complete head; ``.response`` holds the answer to send.
            RuntimeError: ``feed`` after the head was returned.
        """
        return self._feed(data)  # type: ignore[return-value]

    def _parse(self, start_line: bytes, headers: Headers) -> RequestHead:
        match = _REQUEST_LINE.fullmatch(start_line)
        if match is None:
            raise self._fail(400, f"malformed HTTP request line: {_show(start_line)}")
        method, target, version = match.groups()
        method, target, version = method.decode("ascii"), target.decode("ascii"), version.decode("ascii")
        # Shared, like the header names: every idle connection keeps these.
        return RequestHead(sys.intern(method), target, sys.intern(version), headers)


class ResponseHeadParser(_HeadParser):
    """Incremental parser for one HTTP response head (the client side).

    Like :class:`RequestHeadParser`, but its errors carry no ``.response``
    (a client has nobody to answer); their ``.status`` says what kind of
    failure it was (400 malformed, 431 too large).
    """

    _answer_errors = False

    def feed(self, data: bytes) -> ResponseHead | None:
        """Add received bytes; return the head once it is complete.

        Raises:
            HandshakeError: a malformed or oversized response head.
            RuntimeError: ``feed`` after the head was returned.
        """
        return self._feed(data)  # type: ignore[return-value]

    def _parse(self, start_line: bytes, headers: Headers) -> ResponseHead:
        match = _STATUS_LINE.fullmatch(start_line)
        if match is None:
            raise self._fail(400, f"malformed HTTP status line: {_show(start_line)}")
        version, status, reason = match.groups()
        return ResponseHead(
            version.decode("ascii"), int(status), (reason or b"").decode("ascii"), headers
        )
