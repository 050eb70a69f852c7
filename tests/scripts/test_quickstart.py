"""scripts/quickstart.sh refuses at once, before any setup, when a port its server needs is taken.
(Its full run sets up the machine and trains a model: the README's first command, too slow for
the test suite.)"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_fails_at_once_when_its_http_port_is_taken() -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8080))
        holder.listen()
    except OSError:
        pass  # something else holds it already: the same situation for the script
    try:
        p = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                           timeout=120)
    finally:
        holder.close()
    assert p.returncode == 1, p.stdout + p.stderr
    assert "port 8080 is already in use" in p.stderr, p.stderr
    assert "ss -ltnp" in p.stderr
    assert "==>" not in p.stdout + p.stderr, "it set up or started something before refusing"
