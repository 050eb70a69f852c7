"""textrec_client.Recognizer against a real `textrec-worker serve` (see conftest.py)."""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

import grpc
import pytest

from textrec_client import (
    DeadlineExceeded,
    InvalidImage,
    ModelInfo,
    Prediction,
    Recognizer,
    TextrecError,
    Unauthenticated,
    Unavailable,
)
from textrec_client.proto import recognizer_pb2, recognizer_pb2_grpc


def cer(hyp: str, ref: str) -> float:
    """Character error rate: Levenshtein distance over the reference length."""
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i]
        for j, r in enumerate(ref, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r)))
        prev = cur
    return prev[-1] / max(len(ref), 1)


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts the unary calls that actually go out on the channel, per method."""

    def __init__(self) -> None:
        self.calls: List[str] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation, client_call_details, request):
        with self._lock:
            self.calls.append(client_call_details.method)
        return continuation(client_call_details, request)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recognize_returns_text_close_to_truth(server, lines: List[Tuple[bytes, str]]) -> None:
    with Recognizer(server.grpc_target, timeout=30) as rec:
        image, truth = lines[0]
        p = rec.recognize(image, request_id="line-0")
    assert isinstance(p, Prediction)
    assert cer(p.text, truth) < 0.3, (p.text, truth)
    assert 0.0 <= p.confidence <= 1.0
    assert len(p.char_confidences) == len(p.text)
    assert p.request_id == "line-0"
    assert p.model_version
    assert p.batch_size >= 1
    assert p.timing.total_ms > 0


def test_recognize_accepts_a_file_path(server, tmp_path, lines) -> None:
    image, truth = lines[1]
    path = tmp_path / "line.png"
    path.write_bytes(image)
    with Recognizer(server.grpc_target) as rec:
        assert rec.recognize(path).text == rec.recognize(image).text


def test_batch_preserves_order(server, lines: List[Tuple[bytes, str]]) -> None:
    images = [img for img, _ in lines]
    with Recognizer(server.grpc_target, timeout=60) as rec:
        singles = [rec.recognize(img).text for img in images]
        ids = [f"id-{i}" for i in range(len(images))]
        batch = rec.recognize_batch(images, request_ids=ids)
        reversed_batch = rec.recognize_batch(list(reversed(images)))
    assert [p.request_id for p in batch] == ids
    assert [p.text for p in batch] == singles
    assert [p.text for p in reversed_batch] == list(reversed(singles))
    # The model reads the lines: their mean CER is small, so the order is not a coincidence.
    mean_cer = sum(cer(p.text, truth) for p, (_, truth) in zip(batch, lines)) / len(lines)
    assert mean_cer < 0.3, mean_cer


def test_batch_item_error_is_raised_or_returned(server, lines) -> None:
    good = lines[0][0]
    with Recognizer(server.grpc_target) as rec:
        with pytest.raises(InvalidImage) as info:
            rec.recognize_batch([good, b"not an image", good])
        assert info.value.index == 1
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        results = rec.recognize_batch([good, b"not an image", good], return_exceptions=True)
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], InvalidImage) and results[1].index == 1
    assert results[0].text == results[2].text


def test_empty_batch_is_an_empty_list(server) -> None:
    with Recognizer(server.grpc_target) as rec:
        assert rec.recognize_batch([]) == []


def test_stream_yields_results_in_order(server, lines) -> None:
    images = [img for img, _ in lines[:5]] + [b"garbage"]
    with Recognizer(server.grpc_target) as rec:
        singles = [rec.recognize(img).text for img in images[:5]]
        results = list(rec.recognize_stream(images))
    assert [r.text for r in results[:5]] == singles
    assert [r.request_id for r in results[:5]] == [str(i) for i in range(5)]
    assert isinstance(results[5], InvalidImage) and results[5].index == 5


def test_model_info_has_a_version(server, lines) -> None:
    with Recognizer(server.grpc_target) as rec:
        info = rec.model_info()
        p_version = rec.recognize(lines[0][0]).model_version
    assert isinstance(info, ModelInfo)
    assert len(info.version) == 64 and int(info.version, 16) >= 0  # sha256 hex
    assert info.version == p_version
    assert info.source
    assert info.loaded_at
    assert isinstance(info.manifest, dict) and info.manifest


def test_garbage_bytes_raise_invalid_image_with_the_server_message(server) -> None:
    stub_error = None
    # What the server says, straight from the raw stub: the wrapper must pass it on unchanged.
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = recognizer_pb2_grpc.RecognizerStub(ch)
        try:
            stub.Recognize(recognizer_pb2.RecognizeRequest(image=b"garbage bytes"), timeout=10)
        except grpc.RpcError as e:
            stub_error = e
    assert stub_error is not None and stub_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Recognizer(server.grpc_target, retries=2) as rec:
        with pytest.raises(InvalidImage) as info:
            rec.recognize(b"garbage bytes")
    err = info.value
    assert isinstance(err, TextrecError)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == stub_error.details() and err.message
    assert err.message in str(err)
    assert err.attempts == 1  # INVALID_ARGUMENT is not retried


def test_deadline_exceeded_maps_to_a_clear_exception(server, lines) -> None:
    images = [img for img, _ in lines]
    with Recognizer(server.grpc_target, timeout=30) as rec:
        with pytest.raises(DeadlineExceeded) as info:
            # A microsecond cannot cover a round trip, let alone 16 recognitions.
            rec.recognize_batch(images, timeout=1e-6)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client is still usable afterwards.
        assert rec.recognize(images[0]).text


def test_unavailable_is_retried_then_raised() -> None:
    counter = CountingInterceptor()
    target = f"127.0.0.1:{closed_port()}"
    with Recognizer(
        target, timeout=30, retries=2, backoff=0.01, interceptors=[counter]
    ) as rec:
        with pytest.raises(Unavailable) as info:
            rec.recognize(b"anything")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.attempts == 3
    assert counter.calls == ["/textrec.v1.Recognizer/Recognize"] * 3


def test_no_retries_means_one_attempt() -> None:
    counter = CountingInterceptor()
    with Recognizer(f"127.0.0.1:{closed_port()}", retries=0, interceptors=[counter]) as rec:
        with pytest.raises(Unavailable) as info:
            rec.model_info()
    assert info.value.attempts == 1
    assert counter.calls == ["/textrec.v1.Recognizer/GetModel"]


def test_invalid_argument_is_not_retried(server) -> None:
    counter = CountingInterceptor()
    with Recognizer(server.grpc_target, retries=3, interceptors=[counter]) as rec:
        with pytest.raises(InvalidImage):
            rec.recognize(b"garbage")
    assert len(counter.calls) == 1


def test_context_manager_closes_the_channel(server, lines) -> None:
    with Recognizer(server.grpc_target) as rec:
        rec.recognize(lines[0][0])
    with pytest.raises(ValueError):
        rec.recognize(lines[0][0])
    rec.close()  # idempotent


def test_round_robin_option_builds_a_working_channel(server, lines) -> None:
    with Recognizer(f"dns:///{server.grpc_target}", load_balancing="round_robin") as rec:
        assert rec.recognize(lines[0][0]).text


def test_wait_ready(server) -> None:
    with Recognizer(server.grpc_target) as rec:
        rec.wait_ready(timeout=10)
    with Recognizer(f"127.0.0.1:{closed_port()}") as rec:
        with pytest.raises(Unavailable):
            rec.wait_ready(timeout=0.5)


def test_example_script(server, tmp_path, lines) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "recognize.py"
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(lines[0][0])
    bad.write_bytes(b"not an image")
    with Recognizer(server.grpc_target) as rec:
        expected = rec.recognize(lines[0][0]).text
    for mode in ([], ["--batch"]):
        run = subprocess.run(
            [sys.executable, str(script), str(good), str(bad), "--target", server.grpc_target]
            + mode,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1, run.stderr  # one image failed
        out = run.stdout.splitlines()
        assert out[0].startswith(f"{good}\t") and out[0].endswith(f"\t{expected}")
        assert out[1].startswith(f"{bad}\terror\tINVALID_ARGUMENT: ")


def test_tls_with_the_right_token_recognizes(tls_server, lines: List[Tuple[bytes, str]]) -> None:
    srv, pki, token = tls_server.server, tls_server.pki, tls_server.token
    with Recognizer(srv.grpc_target, timeout=30, root_certificates=pki.ca, token=token) as rec:
        p = rec.recognize(lines[0][0])
        assert p.text
        assert rec.model_info().version == p.model_version
    token_file = pki.ca.parent / "client-token"
    token_file.write_text(token + "\n")
    ca_bytes = pki.ca.read_bytes()
    with Recognizer(
        srv.grpc_target, timeout=30, root_certificates=ca_bytes, token_file=token_file
    ) as rec:
        assert rec.recognize_batch([lines[0][0]])[0].text == p.text


def test_tls_with_a_wrong_or_no_token_is_unauthenticated(tls_server, lines) -> None:
    srv, pki = tls_server.server, tls_server.pki
    for token in ["not-the-token", None]:
        with Recognizer(srv.grpc_target, timeout=30, root_certificates=pki.ca, token=token) as rec:
            with pytest.raises(Unauthenticated) as e:
                rec.recognize(lines[0][0])
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert e.value.attempts == 1, "UNAUTHENTICATED is not retried"


def test_tls_server_refuses_plaintext_and_unknown_cas(tls_server, lines) -> None:
    srv, token = tls_server.server, tls_server.token
    with Recognizer(srv.grpc_target, timeout=5, retries=0, token=token) as rec:
        with pytest.raises(TextrecError) as e:
            rec.recognize(lines[0][0])
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # The system roots do not know the test CA.
    with Recognizer(srv.grpc_target, timeout=5, retries=0, tls=True, token=token) as rec:
        with pytest.raises(Unavailable):
            rec.recognize(lines[0][0])


def test_client_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError):
        Recognizer("127.0.0.1:1", client_cert=b"x")
