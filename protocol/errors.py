# The protocol layer's error types. Every failure to decode or validate something that came from outside
# is one of these, never an exception from msgpack or nacl. `reason` starts with a machine-readable prefix
# (spec/wire.md lists them) so that a peer or a log can act on it. `Reason` is that prefix as a value:
# code decides on the kind, never by matching text.
from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a connection ends or a thing is refused: the machine-readable prefix of spec/wire.md."""

    INVALID = "invalid"
    TOO_LARGE = "too-large"
    UNSUPPORTED = "unsupported"
    BLOCKED = "blocked"
    DUPLICATE = "duplicate"
    FORK = "fork"
    RATE_LIMITED = "rate-limited"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    PROBE = "probe"
    CLOSED = "closed"  # the peer closed (its own reason follows) or the transport ended

    @classmethod
    def of(cls, text: str) -> Reason:
        """The kind named by the prefix of a reason text from the wire; unknown prefixes are CLOSED."""
        prefix = text.split(":", 1)[0].strip()
        try:
            return cls(prefix)
        except ValueError:
            return cls.CLOSED


class ProtocolError(Exception):
    """Base of every error the protocol layer raises about bytes it was given."""

    prefix = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.message}"

    @property
    def kind(self) -> Reason:
        return Reason(self.prefix)


class RemoteProtocolError(ProtocolError):
    """The peer broke the replication rules (spec/replication.md): the connection is closed with `reason`."""

    def __init__(self, message: str, kind: Reason = Reason.INVALID) -> None:
        super().__init__(message)
        self.prefix = kind.value


class LocalProtocolError(ProtocolError):
    """This node asked the protocol layer to do something the rules forbid: a bug of ours, not the peer's."""

    prefix = "internal"


class InvalidId(ProtocolError):
    """A feed id, entry hash or address in text form that does not parse or fails its checksum."""


class InvalidEntry(ProtocolError):
    """A log entry (header, signature or payload) that fails decoding or validation."""


class TooLarge(InvalidEntry):
    prefix = "too-large"


class Blocked(InvalidEntry):
    """An entry of a feed that this node's owner blocks: not stored (spec/log.md, "Ingesting a batch")."""

    prefix = "blocked"


class ForkDetected(InvalidEntry):
    """A second validly signed entry for a (author, seq) that already has a different entry."""

    prefix = "fork"
