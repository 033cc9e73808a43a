# The protocol layer's error types. Every failure to decode or validate something that came from outside
# is one of these, never an exception from msgpack or nacl. `reason` starts with a machine-readable prefix
# (spec/wire.md lists them) so that a peer or a log can act on it.


class ProtocolError(Exception):
    """Base of every error the protocol layer raises about bytes it was given."""

    prefix = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.message}"


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
