"""Fixtures: a real `textrec-worker serve` on free loopback ports, and sample line images.

The worker binary is `$TEXTREC_WORKER`, else `$CARGO_TARGET_DIR/release/textrec-worker`, else
`$CARGO_TARGET_DIR/debug/textrec-worker` (what `cargo test --workspace` builds). Without one the
tests fail (they do not skip: a skipped client suite would pass CI while testing nothing).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
CHECK_IMAGES = REPO / "models" / "small" / "check" / "training-fonts"
READY_TIMEOUT_S = 120.0


def worker_binary() -> Path:
    candidates: List[Path] = []
    if os.environ.get("TEXTREC_WORKER"):
        candidates.append(Path(os.environ["TEXTREC_WORKER"]))
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates += [
            Path(target) / "release" / "textrec-worker",
            Path(target) / "debug" / "textrec-worker",
        ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "no textrec-worker binary: set TEXTREC_WORKER, or CARGO_TARGET_DIR with a built "
        f"release or debug worker (looked at {[str(c) for c in candidates]})"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    grpc_target: str
    http_base: str
    process: subprocess.Popen
    log: Path


def _ready(http_base: str, context: Optional[ssl.SSLContext] = None) -> bool:
    try:
        with urllib.request.urlopen(http_base + "/readyz", timeout=2, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(binary: Path, log: Path, extra: Sequence[str] = (), scheme: str = "http") -> Server:
    grpc_port, http_port = free_port(), free_port()
    while http_port == grpc_port:
        http_port = free_port()
    out = open(log, "wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "serve",
            "--grpc-addr",
            f"127.0.0.1:{grpc_port}",
            "--http-addr",
            f"127.0.0.1:{http_port}",
            "--shutdown-grace",
            "2s",
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    return Server(f"127.0.0.1:{grpc_port}", f"{scheme}://127.0.0.1:{http_port}", proc, log)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(
    logs: Path,
    extra: Sequence[str] = (),
    scheme: str = "http",
    context: Optional[ssl.SSLContext] = None,
) -> Iterator[Server]:
    """Start a worker, wait for its /readyz, yield it, stop it."""
    binary = worker_binary()
    # Free ports are picked before the worker binds them; another process may take one in
    # between, so a worker that exits at startup is started again on new ports.
    for attempt in range(3):
        srv = _start(binary, logs / f"serve-{attempt}.log", extra, scheme)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while srv.process.poll() is None and time.monotonic() < deadline:
            if _ready(srv.http_base, context):
                break
            time.sleep(0.1)
        if srv.process.poll() is None and _ready(srv.http_base, context):
            try:
                yield srv
            finally:
                _stop(srv.process)
            return
        exited_by_itself = srv.process.poll() is not None
        _stop(srv.process)
        if not exited_by_itself:
            break  # alive but never ready: starting again would not help
    pytest.fail(f"textrec-worker serve did not become ready; log:\n{srv.log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A `textrec-worker serve` of the built-in model, ready (its /readyz answered 200)."""
    yield from _serve(tmp_path_factory.mktemp("worker"))


@dataclass
class Pki:
    """A CA made at test time and certificates it signed (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {' '.join(args)} failed:\n{r.stderr}"


def make_pki(d: Path) -> Pki:
    """A P-256 CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    assert shutil.which("openssl"), "the TLS tests make their certificates with the openssl CLI"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=textrec test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, usage, san in [
        ("server", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ]:
        (d / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{san}"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=textrec test {name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
                 "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                   d / "client.key")


#: The bearer token of :func:`tls_server`.
TEST_TOKEN = "py-client-test-token"


@dataclass
class TlsServer:
    server: Server
    pki: Pki
    token: str


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A `textrec-worker serve` over TLS (a test CA) that requires :data:`TEST_TOKEN`."""
    d = tmp_path_factory.mktemp("tls")
    pki = make_pki(d)
    token = d / "tokens"
    token.write_text(f"  other-token\n{TEST_TOKEN}\n")
    extra = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
             "--auth-token-file", str(token)]
    context = ssl.create_default_context(cafile=str(pki.ca))
    for srv in _serve(d, extra, "https", context):
        yield TlsServer(srv, pki, TEST_TOKEN)


@pytest.fixture(scope="session")
def lines() -> List[Tuple[bytes, str]]:
    """Rendered text lines of the training fonts with their ground truth: (png bytes, text)."""
    pngs = sorted(CHECK_IMAGES.glob("*.png"))
    assert pngs, f"no check images in {CHECK_IMAGES}"
    out = []
    for png in pngs[:16]:
        gt = png.with_suffix(".gt.txt")
        out.append((png.read_bytes(), gt.read_text(encoding="utf-8").strip()))
    return out
