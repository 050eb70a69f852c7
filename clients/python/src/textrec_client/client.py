"""The typed wrapper around textrec's gRPC API (``textrec.v1.Recognizer``)."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

import grpc

from ._pb.textrec.v1 import recognizer_pb2 as pb
from ._pb.textrec.v1 import recognizer_pb2_grpc as pb_grpc
from .errors import DeadlineExceeded, TextrecError, error_for_code, status_code

__all__ = ["Recognizer", "Prediction", "Timing", "ModelInfo", "ImageLike"]

#: An encoded image (PNG, JPEG, TIFF or BMP): its bytes, or the path of a file holding them.
ImageLike = Union[bytes, bytearray, memoryview, "os.PathLike[str]", str]

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Where the server's time went, in milliseconds."""

    #: Admission to response, as the server measured it.
    total_ms: float = 0.0
    #: Decoding and preprocessing.
    preprocess_ms: float = 0.0
    #: Waiting for a batch slot.
    queue_ms: float = 0.0
    #: The forward pass (shared by the whole batch).
    inference_ms: float = 0.0


@dataclass(frozen=True)
class Prediction:
    """The recognized text of one image."""

    #: The text of the line.
    text: str
    #: Line confidence in [0, 1]: the geometric mean of the emitted tokens' probabilities
    #: (end of line included).
    confidence: float
    #: One probability per character of :attr:`text`.
    char_confidences: Tuple[float, ...] = ()
    #: Version of the model that answered (sha256 of its manifest.json).
    model_version: str = ""
    #: The request id sent with the image, echoed back.
    request_id: str = ""
    #: How many images shared the forward pass.
    batch_size: int = 0
    #: Where the server's time went.
    timing: Timing = field(default_factory=Timing)

    @classmethod
    def from_proto(cls, r: pb.RecognizeResponse) -> "Prediction":
        """Builds a Prediction from a ``textrec.v1.RecognizeResponse``."""
        t = r.timing
        return cls(
            text=r.text,
            confidence=float(r.confidence),
            char_confidences=tuple(float(c) for c in r.char_confidences),
            model_version=r.model_version,
            request_id=r.request_id,
            batch_size=int(r.batch_size),
            timing=Timing(
                total_ms=t.total_ms,
                preprocess_ms=t.preprocess_ms,
                queue_ms=t.queue_ms,
                inference_ms=t.inference_ms,
            ),
        )


@dataclass(frozen=True)
class ModelInfo:
    """The model a server is serving."""

    #: sha256 of the model's manifest.json; :attr:`Prediction.model_version` of its answers.
    version: str
    #: URL of the model folder (credentials redacted by the server).
    source: str
    #: RFC 3339 time the model was loaded.
    loaded_at: str
    #: The manifest, as JSON text.
    manifest_json: str = ""

    @property
    def manifest(self) -> Dict[str, Any]:
        """The manifest, parsed (an empty dict when the server sent none)."""
        return json.loads(self.manifest_json) if self.manifest_json else {}

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> "ModelInfo":
        """Builds a ModelInfo from a ``textrec.v1.ModelInfo``."""
        return cls(
            version=m.version,
            source=m.source,
            loaded_at=m.loaded_at,
            manifest_json=m.manifest_json,
        )


def _pem(value: Optional[Union[bytes, str, "os.PathLike[str]"]]) -> Optional[bytes]:
    """PEM bytes given as bytes or as the path of a file holding them."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _read_token(path: Union[str, "os.PathLike[str]"]) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.strip()
    raise ValueError(f"no token in {os.fspath(path)}")


def _image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    raise TypeError(f"an image is bytes or a file path, not {type(image).__name__}")


class Recognizer:
    """A client of one textrec server (or a load-balanced set of them).

    Args:
        target: gRPC target, e.g. ``"localhost:50051"`` or, for client-side load balancing
            over a headless Kubernetes Service, ``"dns:///textrec-headless:50051"`` (see
            ``load_balancing``).
        timeout: Default deadline of a call in seconds, retries included; ``None`` for none
            (the server then applies its own ``--request-timeout``). Each call can override it.
        retries: How many times a call that failed with UNAVAILABLE (no server reachable, or
            no model loaded yet) is tried again. No other status is retried: INVALID_ARGUMENT
            will not change, and RESOURCE_EXHAUSTED means the server asks for less traffic.
        backoff: Delay before the first retry, in seconds; it doubles on each further retry up
            to ``max_backoff``, with random jitter (each sleep is 50-100% of the delay).
        max_backoff: Longest delay between two attempts, in seconds.
        credentials: TLS credentials (``grpc.ssl_channel_credentials()``); plaintext without
            them and without the TLS options below.
        tls: Connect over TLS, trusting the system's root certificates (implied by
            ``root_certificates`` and ``client_cert``).
        root_certificates: PEM CA certificate(s) to trust instead of the system's (a private
            CA): bytes, or the path of a file holding them.
        client_cert: PEM client certificate for mutual TLS (bytes or a path); needs
            ``client_key``.
        client_key: PEM private key of ``client_cert`` (bytes or a path).
        tls_server_name: The name the server's certificate must carry, when it differs from
            the host of ``target`` (an IP address or a port-forward, say).
        token: A bearer token, sent as ``authorization: Bearer TOKEN`` with every call (the
            server's ``--auth-token-file``).
        token_file: A file whose first non-empty line is the token (instead of ``token``).
        load_balancing: gRPC load-balancing policy, e.g. ``"round_robin"`` to spread calls over
            every address a ``dns:///`` target resolves to. Default: gRPC's ``pick_first``.
        options: Extra gRPC channel options, e.g. ``[("grpc.max_send_message_length", n)]``.
        interceptors: Client interceptors wrapped around the channel (tracing, auth, metrics).
        metadata: Metadata sent with every call (e.g. an ``authorization`` header).
        channel: Use this channel instead of creating one (``target`` and the channel options
            are then ignored; the channel is still closed by :meth:`close`).

    The client is thread-safe; share one per process. Use it as a context manager, or call
    :meth:`close`, to close the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: Optional[float] = 30.0,
        retries: int = 2,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        tls: bool = False,
        root_certificates: Optional[Union[bytes, str, "os.PathLike[str]"]] = None,
        client_cert: Optional[Union[bytes, str, "os.PathLike[str]"]] = None,
        client_key: Optional[Union[bytes, str, "os.PathLike[str]"]] = None,
        tls_server_name: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        load_balancing: Optional[str] = None,
        options: Sequence[Tuple[str, Any]] = (),
        interceptors: Sequence[Any] = (),
        metadata: Sequence[Tuple[str, str]] = (),
        channel: Optional[grpc.Channel] = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, not {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together")
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = _read_token(token_file)
        meta = list(metadata)
        if token is not None:
            token = token.strip()
            if not token:
                raise ValueError("the bearer token is empty")
            meta.append(("authorization", f"Bearer {token}"))
        self._metadata: Tuple[Tuple[str, str], ...] = tuple(meta)
        if credentials is None and (tls or root_certificates is not None or client_cert is not None):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
        if channel is None:
            opts = list(options)
            if tls_server_name:
                opts.append(("grpc.ssl_target_name_override", tls_server_name))
            if load_balancing:
                opts.append(
                    (
                        "grpc.service_config",
                        json.dumps({"loadBalancingConfig": [{load_balancing: {}}]}),
                    )
                )
            if credentials is None:
                channel = grpc.insecure_channel(target, options=opts)
            else:
                channel = grpc.secure_channel(target, credentials, options=opts)
        self._base_channel = channel
        self._channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._stub = pb_grpc.RecognizerStub(self._channel)
        self._closed = False

    # -- calls -------------------------------------------------------------------------------

    def recognize(
        self,
        image: ImageLike,
        *,
        request_id: str = "",
        timeout: Optional[float] = None,
    ) -> Prediction:
        """Recognizes the text of one line image.

        Args:
            image: The encoded image (PNG, JPEG, TIFF or BMP) as bytes, or a file path.
            request_id: Free-form id, echoed in :attr:`Prediction.request_id`.
            timeout: Deadline of this call in seconds (retries included); default: the
                client's ``timeout``.

        Raises:
            InvalidImage: The server could not use the image; ``message`` says why.
            DeadlineExceeded: No answer before the deadline.
            Overloaded: The server is shedding load.
            Unavailable: No server answered, after ``retries`` retries.
            TextrecError: Any other failure.
        """
        req = pb.RecognizeRequest(image=_image_bytes(image), request_id=request_id)
        resp = self._call(self._stub.Recognize, req, timeout)
        return Prediction.from_proto(resp)

    @overload
    def recognize_batch(
        self,
        images: Iterable[ImageLike],
        *,
        request_ids: Optional[Sequence[str]] = ...,
        timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = ...,
    ) -> List[Prediction]: ...

    @overload
    def recognize_batch(
        self,
        images: Iterable[ImageLike],
        *,
        request_ids: Optional[Sequence[str]] = ...,
        timeout: Optional[float] = ...,
        return_exceptions: bool,
    ) -> List[Union[Prediction, TextrecError]]: ...

    def recognize_batch(
        self,
        images: Iterable[ImageLike],
        *,
        request_ids: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
        return_exceptions: bool = False,
    ) -> Union[List[Prediction], List[Union[Prediction, TextrecError]]]:
        """Recognizes several line images in one call; results come back in the same order.

        The server recognizes each image on its own: one bad image does not fail the others.

        Args:
            images: Encoded images (bytes or file paths); at most 256 per call.
            request_ids: One id per image, echoed back; default: none.
            timeout: Deadline of this call in seconds (retries included).
            return_exceptions: If true, an image that failed yields its exception (a
                :class:`TextrecError` with ``index`` set) in its place in the list; if false
                (the default), the first failed image's exception is raised.

        Returns:
            A list of :class:`Prediction` (and, with ``return_exceptions``, exceptions), one
            per image, in order.

        Raises:
            InvalidImage: An image (``index`` says which) or the whole call was refused.
            DeadlineExceeded, Overloaded, Unavailable, TextrecError: as :meth:`recognize`.
        """
        blobs = [_image_bytes(i) for i in images]
        if request_ids is not None and len(request_ids) != len(blobs):
            raise ValueError(f"{len(request_ids)} request ids for {len(blobs)} images")
        ids = list(request_ids) if request_ids is not None else [""] * len(blobs)
        if not blobs:
            return []
        req = pb.RecognizeBatchRequest(
            images=[pb.RecognizeRequest(image=b, request_id=i) for b, i in zip(blobs, ids)]
        )
        resp = self._call(self._stub.RecognizeBatch, req, timeout)
        if len(resp.results) != len(blobs):
            raise TextrecError(
                grpc.StatusCode.INTERNAL,
                f"the server answered {len(resp.results)} results for {len(blobs)} images",
            )
        out: List[Union[Prediction, TextrecError]] = []
        for index, item in enumerate(resp.results):
            result = _item_result(item, index)
            if isinstance(result, TextrecError) and not return_exceptions:
                raise result
            out.append(result)
        return out

    def recognize_stream(
        self,
        images: Iterable[ImageLike],
        *,
        request_ids: Optional[Iterable[str]] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Union[Prediction, TextrecError]]:
        """Streams images to the server and yields a result per image, in order, as they come.

        Meant for long sequences (a document's lines) without one call per image. A failed
        image yields its exception (``index`` set) and the stream goes on. Streams are not
        retried: an error of the whole stream is raised from the iterator.

        Args:
            images: Encoded images (bytes or file paths), consumed lazily.
            request_ids: Ids echoed back, one per image; default: the image's index.
            timeout: Deadline of the whole stream in seconds; default: the client's ``timeout``.
        """
        ids = iter(request_ids) if request_ids is not None else None

        def requests() -> Iterator[pb.RecognizeRequest]:
            for n, image in enumerate(images):
                rid = next(ids) if ids is not None else str(n)
                yield pb.RecognizeRequest(image=_image_bytes(image), request_id=rid)

        t = self.timeout if timeout is None else timeout
        call = self._stub.RecognizeStream(requests(), timeout=t, metadata=self._metadata)
        try:
            for index, item in enumerate(call):
                yield _item_result(item, index)
        except grpc.RpcError as e:
            raise _from_rpc_error(e) from e
        finally:
            call.cancel()

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """The model the server is serving (its version, source, load time and manifest)."""
        return ModelInfo.from_proto(self._call(self._stub.GetModel, pb.GetModelRequest(), timeout))

    def wait_ready(self, timeout: float) -> None:
        """Blocks until the channel is connected, or raises :class:`Unavailable` after ``timeout``."""
        try:
            grpc.channel_ready_future(self._base_channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise error_for_code(
                grpc.StatusCode.UNAVAILABLE,
                f"could not connect to {self.target} within {timeout} s",
            ) from e

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled. Idempotent."""
        if not self._closed:
            self._closed = True
            self._base_channel.close()

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Recognizer({self.target!r}, timeout={self.timeout}, retries={self.retries})"

    # -- internals ---------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, timeout: Optional[float]) -> T:
        """Calls a unary method under one deadline, retrying UNAVAILABLE with backoff."""
        if self._closed:
            raise ValueError("the Recognizer is closed")
        t = self.timeout if timeout is None else timeout
        if t is not None and t <= 0:
            raise ValueError(f"timeout must be positive, not {t}")
        deadline = None if t is None else time.monotonic() + t
        delay = self.backoff
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the {t} s deadline passed before attempt {attempt}",
                    attempts=attempt - 1,
                )
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as e:
                code = _code(e)
                retryable = code == grpc.StatusCode.UNAVAILABLE and attempt <= self.retries
                if retryable:
                    sleep = min(delay, self.max_backoff) * random.uniform(0.5, 1.0)
                    # A retry that could not start before the deadline is not worth the wait.
                    if deadline is None or time.monotonic() + sleep < deadline:
                        time.sleep(sleep)
                        delay = delay * 2 if delay > 0 else 0.0
                        continue
                raise _from_rpc_error(e, attempts=attempt) from e


def _code(e: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(e, "code", None)
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


def _from_rpc_error(e: grpc.RpcError, *, attempts: int = 1) -> TextrecError:
    details = getattr(e, "details", None)
    message = (details() if callable(details) else None) or str(e)
    return error_for_code(_code(e), message, attempts=attempts)


def _item_result(item: pb.RecognizeStreamItem, index: int) -> Union[Prediction, TextrecError]:
    kind = item.WhichOneof("result")
    if kind == "response":
        return Prediction.from_proto(item.response)
    if kind == "error":
        return error_for_code(
            status_code(item.error.code),
            item.error.message,
            index=index,
            request_id=item.request_id,
        )
    return TextrecError(
        grpc.StatusCode.INTERNAL,
        "the server sent an item with neither a response nor an error",
        index=index,
        request_id=item.request_id,
    )
