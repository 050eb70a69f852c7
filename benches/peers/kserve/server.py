"""The KServe peer: textrec's `small` model as a `kserve.Model`, served by KServe's
`ModelServer`, called over the Open Inference Protocol v2 (gRPC `ModelInfer`) like
`textrec-worker serve`.

    python benches/peers/kserve/server.py --model_dir DIR --grpc_port 8081 --http_port 8080 \
        [--model_name textrec] [--torch_threads N]

The model takes one BYTES input (any name; one encoded image per element) and returns a BYTES
`TEXT` output of the same shape: textrec's preprocessing and greedy decoding with the PyTorch
reference network (benches/peers/recognizer.py), all elements of a request in one padded pass.

Setup, as KServe's documentation has it for a custom Python model: `load()` in the
constructor, synchronous `predict` (KServe calls it on the server's event loop), one server
process (`--workers` multiplies only the REST server's uvicorn processes; the gRPC server always
runs in the main process), no request batching (KServe's batcher is the InferenceService's
agent sidecar on Kubernetes, in front of the REST endpoint; it does not exist for a
`ModelServer` started by itself, nor for gRPC). PyTorch keeps its default thread count (one
intra-op thread per core) unless `--torch_threads` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "reference")]

import torch  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402

from recognizer import Recognizer  # noqa: E402


class TextrecModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.recognizer: Recognizer | None = None
        self.load()

    def load(self) -> bool:
        self.recognizer = Recognizer(self.model_dir)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
            raise InvalidInput("expected one BYTES input of encoded images")
        tensor = payload.inputs[0]
        images = [bytes(x) for x in tensor.as_numpy().reshape(-1)]
        texts = self.recognizer(images)
        return InferResponse(
            model_name=self.name,
            response_id=payload.id,
            infer_outputs=[InferOutput(name="TEXT", shape=list(tensor.shape), datatype="BYTES", data=texts)],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--model_dir", required=True, help="textrec model folder")
    parser.add_argument("--torch_threads", type=int, default=0, help="PyTorch intra-op threads (0: its default)")
    args, _ = parser.parse_known_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1).start(
        [TextrecModel(args.model_name, args.model_dir)]
    )
