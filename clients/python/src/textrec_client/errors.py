"""Exceptions raised by :class:`textrec_client.Recognizer`.

Every error is a :class:`TextrecError` carrying the gRPC status code and the server's message.
The subclasses name the cases a caller usually handles differently:

========================  =====================  ===============================================
exception                 gRPC status            meaning
========================  =====================  ===============================================
:class:`InvalidImage`     INVALID_ARGUMENT       the image is not decodable, too large, too many
                                                 pixels, or the call is malformed; do not retry
:class:`DeadlineExceeded` DEADLINE_EXCEEDED      the call's deadline passed (client or server)
:class:`Overloaded`       RESOURCE_EXHAUSTED     the server shed load or rate-limited the caller
:class:`Unavailable`      UNAVAILABLE            no server answered, after the retries
:class:`Cancelled`        CANCELLED              the call was cancelled or the server gave up
:class:`Unauthenticated`  UNAUTHENTICATED        no bearer token, or one the server does not
                                                 accept (``--auth-token-file``); do not retry
========================  =====================  ===============================================
"""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = [
    "TextrecError",
    "InvalidImage",
    "DeadlineExceeded",
    "Overloaded",
    "Unavailable",
    "Cancelled",
    "Unauthenticated",
    "error_for_code",
]


class TextrecError(Exception):
    """A call to the textrec server failed.

    Attributes:
        code: The gRPC status code.
        message: The server's (or the gRPC library's) description of the failure.
        index: For an item of :meth:`Recognizer.recognize_batch`, its position in the batch;
            otherwise ``None``.
        request_id: The request id the item carried, if any.
        attempts: How many times the call was tried (more than 1 after retries).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        index: Optional[int] = None,
        request_id: str = "",
        attempts: int = 1,
    ) -> None:
        self.code = code
        self.message = message
        self.index = index
        self.request_id = request_id
        self.attempts = attempts
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"image {self.index}: " if self.index is not None else ""
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{where}{self.code.name}: {self.message}{tries}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"index={self.index!r}, attempts={self.attempts})"
        )


class InvalidImage(TextrecError):
    """INVALID_ARGUMENT: the server refused the image (undecodable, too large, too many pixels)."""


class DeadlineExceeded(TextrecError):
    """DEADLINE_EXCEEDED: the call's deadline passed before an answer came."""


class Overloaded(TextrecError):
    """RESOURCE_EXHAUSTED: the server is shedding load or rate limiting; back off and retry later."""


class Unavailable(TextrecError):
    """UNAVAILABLE: no server could be reached (or none had a model loaded), even after retries."""


class Cancelled(TextrecError):
    """CANCELLED: the call was cancelled, or the server did not receive the whole request."""


class Unauthenticated(TextrecError):
    """UNAUTHENTICATED: the call carried no bearer token, or one the server does not accept."""


_BY_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidImage,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Cancelled,
}

_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN for numbers gRPC does not define)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_for_code(
    code: grpc.StatusCode,
    message: str,
    *,
    index: Optional[int] = None,
    request_id: str = "",
    attempts: int = 1,
) -> TextrecError:
    """The exception (a :class:`TextrecError` subclass where one fits) for a gRPC status."""
    cls = _BY_CODE.get(code, TextrecError)
    return cls(code, message, index=index, request_id=request_id, attempts=attempts)
