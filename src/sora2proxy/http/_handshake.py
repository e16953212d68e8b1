"""
The head of an upstream's answer to a WebSocket handshake, checked by the
same llhttp reader as every other upstream response: a tunnel relays that
head to the client, so what would be a 502 elsewhere is a 502 here too.
"""

from __future__ import annotations

from ._reader import ResponseReader, WireError


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
            than 1.0 or 1.1, a head over 64 KiB).
        """
        if self._reader is not None:
            self._reader.feed(data)

    def head_read(
        self, minor: int, code: int, phrase: bytes, fields: object, control: object, length: object
    ) -> None:
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
