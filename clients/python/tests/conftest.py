"""Fixtures: a real `textrec-worker serve` on free loopback ports, and sample line images.

The worker binary is `$TEXTREC_WORKER`, else `$CARGO_TARGET_DIR/release/textrec-worker`, else
`$CARGO_TARGET_DIR/debug/textrec-worker` (what `cargo test --workspace` builds). Without one the
tests fail (they do not skip: a skipped client suite would pass CI while testing nothing).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

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


def _ready(http_base: str) -> bool:
    try:
        with urllib.request.urlopen(http_base + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(binary: Path, log: Path) -> Server:
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
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    return Server(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", proc, log)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A `textrec-worker serve` of the built-in model, ready (its /readyz answered 200)."""
    binary = worker_binary()
    logs = tmp_path_factory.mktemp("worker")
    # Free ports are picked before the worker binds them; another process may take one in
    # between, so a worker that exits at startup is started again on new ports.
    for attempt in range(3):
        srv = _start(binary, logs / f"serve-{attempt}.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while srv.process.poll() is None and time.monotonic() < deadline:
            if _ready(srv.http_base):
                break
            time.sleep(0.1)
        if srv.process.poll() is None and _ready(srv.http_base):
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
def lines() -> List[Tuple[bytes, str]]:
    """Rendered text lines of the training fonts with their ground truth: (png bytes, text)."""
    pngs = sorted(CHECK_IMAGES.glob("*.png"))
    assert pngs, f"no check images in {CHECK_IMAGES}"
    out = []
    for png in pngs[:16]:
        gt = png.with_suffix(".gt.txt")
        out.append((png.read_bytes(), gt.read_text(encoding="utf-8").strip()))
    return out
