"""Python client for textrec, the OCR line recognizer (``textrec-worker serve``).

Example::

    from textrec_client import Recognizer

    with Recognizer("localhost:50051", timeout=5.0, retries=2) as rec:
        with open("line.png", "rb") as f:
            p = rec.recognize(f.read())
        print(p.text, p.confidence)

Over TLS, with a private CA and a bearer token::

    rec = Recognizer("ocr.example.com:443", root_certificates="ca.crt", token_file="token")

See :class:`Recognizer` for the calls, :mod:`textrec_client.errors` for the exceptions and
:mod:`textrec_client.proto` for the raw generated stubs.
"""

from .client import ModelInfo, Prediction, Recognizer, Timing
from .errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidImage,
    Overloaded,
    TextrecError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Recognizer",
    "Prediction",
    "Timing",
    "ModelInfo",
    "TextrecError",
    "InvalidImage",
    "DeadlineExceeded",
    "Overloaded",
    "Unavailable",
    "Cancelled",
    "Unauthenticated",
]

__version__ = "0.1.0"
