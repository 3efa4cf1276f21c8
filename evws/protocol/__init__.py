"""Layer 1: the sans-I/O WebSocket protocol (bytes in, events and bytes out).

Nothing here touches a socket, a loop or pyee; drive ``WebSocketProtocol``
yourself, or let ``evws.Connection`` do it.
"""

from .close import CloseCode, is_valid_close_code, parse_close, serialize_close
from .deflate import (
    DeflateConfig,
    DeflateParams,
    PerMessageDeflate,
    accept_client,
    client_offer,
    negotiate_server,
    parse_extensions,
)
from .events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    MessageReceived,
    PingReceived,
    PongReceived,
)
from .frames import Opcode, frame_header, parse_header, serialize_frame
from .handshake import (
    Request,
    Response,
    accept_key,
    build_request,
    check_request,
    check_response,
    default_response,
    generate_key,
    parse_request,
)
from .http import (
    Headers,
    RequestHead,
    RequestHeadParser,
    ResponseHead,
    ResponseHeadParser,
    http_error,
    serialize_request,
    serialize_response,
)
from .mask import apply_mask
from .proxy import ConnectTunnel, basic_credentials, connect_request
from .utf8 import Utf8Validator, validate_utf8
from .websocket import CLIENT, CLOSED, CLOSING, OPEN, SERVER, Side, State, WebSocketProtocol

__all__ = [
    # close.py
    "CloseCode",
    "is_valid_close_code",
    "parse_close",
    "serialize_close",
    # deflate.py
    "DeflateConfig",
    "DeflateParams",
    "PerMessageDeflate",
    "accept_client",
    "client_offer",
    "negotiate_server",
    "parse_extensions",
    # events.py
    "CloseReceived",
    "ConnectionFailed",
    "ConnectionLost",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    # frames.py
    "Opcode",
    "frame_header",
    "parse_header",
    "serialize_frame",
    # handshake.py
    "Request",
    "Response",
    "accept_key",
    "build_request",
    "check_request",
    "check_response",
    "default_response",
    "generate_key",
    "parse_request",
    # http.py
    "Headers",
    "RequestHead",
    "RequestHeadParser",
    "ResponseHead",
    "ResponseHeadParser",
    "http_error",
    "serialize_request",
    "serialize_response",
    # mask.py
    "apply_mask",
    # proxy.py
    "ConnectTunnel",
    "basic_credentials",
    "connect_request",
    # utf8.py
    "Utf8Validator",
    "validate_utf8",
    # websocket.py
    "CLIENT",
    "CLOSED",
    "CLOSING",
    "OPEN",
    "SERVER",
    "Side",
    "State",
    "WebSocketProtocol",
]
