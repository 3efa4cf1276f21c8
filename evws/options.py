"""``Options``: the limits, timeouts, keepalive, flow control and compression of a connection.

Why one object: ``Server``, ``Client``/``connect`` and ``connection_pair``
take the same settings as keyword arguments, and each default used to be
written in each of them. Now each is written once, here; the public keyword
arguments are unchanged and are turned into an ``Options`` (checked once, in
``__post_init__``), which every connection of that server or client shares.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Union

from .protocol.deflate import DeflateConfig

__all__ = ["Options", "Compression", "deflate_config_of"]

#: What the ``compression`` keyword takes: ``"deflate"`` (permessage-deflate
#: with default parameters), a :class:`DeflateConfig`, or ``None`` (off).
Compression = Union[str, None, DeflateConfig]


def deflate_config_of(compression: Compression,
                      deflate_config: Optional[DeflateConfig] = None) -> Optional[DeflateConfig]:
    """``"deflate"`` -> ``deflate_config`` or the defaults, a DeflateConfig as is, None/False -> off.

    Raises:
        ValueError: anything else.
    """
    if not compression:
        return None
    if compression == "deflate":
        return deflate_config or DeflateConfig()
    if isinstance(compression, DeflateConfig):
        return compression
    raise ValueError(f"compression must be 'deflate', a DeflateConfig or None, not {compression!r}")


@dataclass(frozen=True)
class Options:
    """Settings shared by the connections of one ``Server`` or ``Client``.

    Attributes:
        max_payload_size: largest message accepted, all fragments together
            (1009 beyond; ``None``: no limit).
        max_fragments: most frames in one message (1009 beyond; ``None``: no limit).
        max_handshake_size: largest request or response head (431 / 400 beyond).
        handshake_timeout: seconds for the opening handshake (on a client the
            whole opening: connect, TLS and HTTP); ``None``: no limit.
        close_timeout: seconds to wait for the peer to finish a closing handshake.
        ping_interval: seconds between keepalive Pings (``None``: no keepalive).
        ping_timeout: seconds a Ping may wait for its Pong before 1011 (``None``: never).
        high_water: queued output (bytes) from which reading pauses (``None``: never).
        low_water: queued output at which reading resumes and ``drain`` fires
            (``None`` with a ``high_water``: ``min(16 KiB, high_water)``).
        deflate: the permessage-deflate parameters to offer or accept, or
            ``None`` for no compression.
        max_error_body: (client) most bytes of a refusal's body kept.
        max_redirects: (client) most HTTP redirects (301, 302, 303, 307, 308
            with a ``Location``) an opening handshake follows, 10 as in
            ``websockets``; ``0``: none (the 3xx is a ``HandshakeError``).
    """

    max_payload_size: Optional[int] = 1 << 20
    max_fragments: Optional[int] = 1 << 17
    max_handshake_size: int = 16384
    handshake_timeout: Optional[float] = 10.0
    close_timeout: float = 10.0
    ping_interval: Optional[float] = 20.0
    ping_timeout: Optional[float] = 20.0
    high_water: Optional[int] = 64 * 1024
    low_water: Optional[int] = 16 * 1024
    deflate: Optional[DeflateConfig] = DeflateConfig()
    max_error_body: int = 65536
    max_redirects: int = 10

    def __post_init__(self) -> None:
        for name in ("max_payload_size", "max_fragments", "high_water", "low_water"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, not {value!r}")
        for name in ("max_handshake_size", "max_error_body"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be an int > 0, not {value!r}")
        for name in ("handshake_timeout", "ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be None or a number >= 0, not {value!r}")
        if not isinstance(self.close_timeout, (int, float)) or self.close_timeout < 0:
            raise ValueError(f"close_timeout must be a number >= 0, not {self.close_timeout!r}")
        if (not isinstance(self.max_redirects, int) or isinstance(self.max_redirects, bool)
                or self.max_redirects < 0):
            raise ValueError(f"max_redirects must be an int >= 0, not {self.max_redirects!r}")
        if self.ping_interval == 0:
            raise ValueError("ping_interval must be > 0 (None disables keepalive)")
        if self.deflate is not None and not isinstance(self.deflate, DeflateConfig):
            raise ValueError(f"deflate must be a DeflateConfig or None, not {self.deflate!r}")
        if self.high_water is not None:
            low = self.low_water
            if low is None:
                object.__setattr__(self, "low_water", min(16 * 1024, self.high_water))
            elif low > self.high_water:
                raise ValueError("need 0 <= low_water <= high_water")
        else:
            object.__setattr__(self, "low_water", None)

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names, for checking keyword arguments."""
        return frozenset(f.name for f in fields(cls))


#: The defaults, for code that needs one of them (a single source).
DEFAULTS = Options()
