"""A Python gRPC server of textrec's recognizer: the baseline of the serving benchmark.

    python benches/reference/serve_py.py --model DIR --port 50061 [--threads 1]
        [--inference-threads 2] [--max-batch 32] [--max-wait-ms 5] [--workers 64]

It implements `textrec.v1.Recognizer/Recognize` (proto/textrec/v1/recognizer.proto; the stubs
are generated at start with grpcio-tools into a temporary folder) with the PyTorch reference
(textrec_ref): what a Python team would write in an afternoon, done properly. grpcio's thread
pool runs the handlers, which decode and preprocess the image (textrec_ref.preprocess, exactly
textrec's preprocessing) and put it on a queue; each of --inference-threads threads (the same
plan as textrec's server: PyTorch releases the GIL inside operators) takes up to --max-batch
queued lines, waiting at most --max-wait-ms after the first for more (--max-batch 1: no
batching), pads them into one batch and runs greedy decoding with the key/value cache under
`torch.inference_mode()`, with --threads intra-op threads (one inter-op thread). Like textrec's
batcher it only waits while more admitted requests are still being preprocessed, so a lone
request never pays --max-wait-ms. The other RPCs answer UNIMPLEMENTED.

It prints `ready <port>` on stdout once it listens and the model answered a warm-up request.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import queue
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))


def generate_stubs(out: Path):
    """Compile recognizer.proto with grpcio-tools into `out`; returns (pb2, pb2_grpc)."""
    from grpc_tools import protoc

    proto_root = REPO / "proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto_root / "textrec" / "v1" / "recognizer.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with {rc}")
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("textrec.v1.recognizer_pb2")
    pb2_grpc = importlib.import_module("textrec.v1.recognizer_pb2_grpc")
    return pb2, pb2_grpc


@dataclass
class Job:
    line: object  # np.ndarray [height, width] float32
    admitted: float
    preprocess_ms: float
    done: threading.Event = field(default_factory=threading.Event)
    queued_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0
    text: str = ""
    char_conf: list[float] = field(default_factory=list)
    error: Exception | None = None


class Batcher:
    """`threads` inference threads on one queue; up to `max_batch` lines per forward pass."""

    def __init__(self, folder, max_batch: int, max_wait_s: float, threads: int = 1) -> None:
        self.folder = folder
        self.cfg = folder.manifest["preprocessing"]
        self.max_len = folder.net.arch.max_text_len
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: queue.Queue[Job] = queue.Queue()
        # Requests admitted but not queued yet (being decoded and preprocessed).
        self.incoming = 0
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, name=f"inference-{i}", daemon=True) for i in range(max(threads, 1))
        ]
        for t in self.threads:
            t.start()

    def admit(self) -> None:
        with self.lock:
            self.incoming += 1

    def submit(self, job: Job | None) -> Job | None:
        """Queue a preprocessed line (None: preprocessing failed) and wait for its result."""
        with self.lock:
            self.incoming -= 1
        if job is None:
            return None
        self.queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job

    def run(self) -> None:
        import torch

        while True:
            jobs = [self.queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0 or self.incoming == 0:
                    break
                try:
                    jobs.append(self.queue.get(timeout=min(left, 0.0005)))
                except queue.Empty:
                    pass
            start = time.monotonic()
            try:
                self.infer(jobs, torch)
            except Exception as e:  # noqa: BLE001 - every waiting handler gets the error
                for j in jobs:
                    j.error = e
            elapsed = (time.monotonic() - start) * 1000.0
            for j in jobs:
                j.queued_ms = (start - j.admitted) * 1000.0 - j.preprocess_ms
                j.inference_ms = elapsed
                j.batch_size = len(jobs)
                j.done.set()

    def infer(self, jobs: list[Job], torch) -> None:
        from textrec_ref.model import BOS, PAD
        from textrec_ref.preprocess import collate

        images, widths = collate([j.line for j in jobs], self.cfg)
        with torch.inference_mode():
            tokens, _eos, _fed, logits = self.folder.net.greedy_decode(images, widths, self.max_len)
            # Per-character probabilities of the chosen tokens (textrec's char_confidences).
            logits = logits.float()
            logits[..., PAD] = float("-inf")
            logits[..., BOS] = float("-inf")
            probs = logits.softmax(-1)
        for i, (j, ids) in enumerate(zip(jobs, tokens)):
            j.text = self.folder.tokenizer.decode(ids)
            j.char_conf = [float(probs[i, s, t]) for s, t in enumerate(ids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="textrec model folder (manifest.json + model.safetensors)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--inference-threads", type=int, default=2, help="threads running forward passes")
    parser.add_argument("--max-batch", type=int, default=16, help="most lines per forward pass; 1: no batching")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for more lines")
    parser.add_argument("--workers", type=int, default=64, help="grpcio handler threads")
    args = parser.parse_args()

    import grpc
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from textrec_ref.model import load_model_dir
    from textrec_ref.preprocess import decode_gray, prepare

    stub_dir = tempfile.TemporaryDirectory(prefix="textrec-stubs-")
    pb2, pb2_grpc = generate_stubs(Path(stub_dir.name))

    folder = load_model_dir(args.model)
    version = hashlib.sha256((Path(args.model) / "manifest.json").read_bytes()).hexdigest()
    cfg = folder.manifest["preprocessing"]
    batcher = Batcher(folder, max(args.max_batch, 1), max(args.max_wait_ms, 0.0) / 1000.0, args.inference_threads)

    def recognize_bytes(data: bytes) -> Job:
        t0 = time.monotonic()
        batcher.admit()
        try:
            line = prepare(decode_gray(data), cfg)
        except BaseException:
            batcher.submit(None)
            raise
        pre = (time.monotonic() - t0) * 1000.0
        return batcher.submit(Job(line=line, admitted=t0, preprocess_ms=pre))

    class Recognizer(pb2_grpc.RecognizerServicer):
        def Recognize(self, request, context):  # noqa: N802 - gRPC method name
            t0 = time.monotonic()
            try:
                job = recognize_bytes(request.image)
            except (OSError, ValueError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image: {e}")
            conf = 1.0
            for p in job.char_conf:
                conf *= p
            return pb2.RecognizeResponse(
                text=job.text,
                confidence=conf,
                char_confidences=job.char_conf,
                model_version=version,
                timing=pb2.Timing(
                    total_ms=(time.monotonic() - t0) * 1000.0,
                    preprocess_ms=job.preprocess_ms,
                    queue_ms=job.queued_ms,
                    inference_ms=job.inference_ms,
                ),
                batch_size=job.batch_size,
                request_id=request.request_id,
            )

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    )
    pb2_grpc.add_RecognizerServicer_to_server(Recognizer(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}")
    # Warm-up: one forward pass before announcing readiness.
    import numpy as np

    batcher.admit()
    batcher.submit(Job(line=np.zeros((int(cfg["height"]), 64), np.float32), admitted=time.monotonic(), preprocess_ms=0))
    server.start()
    print(f"ready {port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    server.stop(1)


if __name__ == "__main__":
    main()
