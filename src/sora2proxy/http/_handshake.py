"""
The head of an upstream's answer to a WebSocket handshake, checked by the
same llhttp reader as every other upstream response: a tunnel relays that
head to the client, so what would be a 502 elsewhere is a 502 here too.
"""

from __future__ import annotations

from ._reader import ResponseReader, WireError, _Fields


def _tokens(field: tuple[bytes, list[bytes]] | None) -> set[bytes]:
    """
    The lowercase protocol names an C{Upgrade} field lists (without versions).
    """
    if field is None:
        return set()
    return {token.split(b"/")[0].strip().lower() for value in field[1] for token in value.split(b",")}


class HandshakeHead:
    """
    Reads the head of the answer to one handshake, piece by piece.

    @ivar code: its status code once the head is complete (101: the upgrade
        was accepted), else 0.
    """

    def __init__(self) -> None:
        self.code = 0
        self._reader: ResponseReader | None = ResponseReader(self, head_request=True, upgrade=True)

    def feed(self, data: bytes) -> None:
        """
        @raise WireError: llhttp rejects the head, or it breaks a rule the
            proxy adds (a control byte in the reason phrase, a version other
            than 1.0 or 1.1, a head over 64 KiB, a 101 in HTTP/1.0 or to a
            protocol other than C{websocket}).
        """
        if self._reader is not None:
            self._reader.feed(data)

    def head_read(
        self, minor: int, code: int, phrase: bytes, fields: object, control: _Fields, length: object
    ) -> None:
        if code == 101 and minor == 0:
            raise WireError("an HTTP/1.0 answer cannot switch protocols")
        if code == 101 and b"websocket" not in _tokens(control.get(b"upgrade")):
            raise WireError("a 101 to another protocol than the WebSocket one asked for")
        self.code = code
        self._reader = None  # what follows is the tunnel's, or the body relayed as it is

    def body_read(self, data: bytes) -> None:
        """
        The head alone is read: there is no body.
        """

    def body_ended(self, reusable: bool) -> None:
        """
        Nothing to do: the connection is the tunnel's.
        """


__all__ = ["HandshakeHead", "WireError"]
