"""The raw generated stubs, for calls the :class:`~textrec_client.Recognizer` wrapper does not cover.

``recognizer_pb2`` / ``recognizer_pb2_grpc`` hold textrec's own API (``textrec.v1``).
``grpc_service_pb2`` / ``grpc_service_pb2_grpc`` hold the KServe Open Inference Protocol v2 API
(package ``inference``); they are imported on first use only, because other KServe clients
(``tritonclient``) register messages of the same names in protobuf's default pool.

Example::

    import grpc
    from textrec_client.proto import recognizer_pb2, recognizer_pb2_grpc

    stub = recognizer_pb2_grpc.RecognizerStub(grpc.insecure_channel("localhost:50051"))
    print(stub.GetModel(recognizer_pb2.GetModelRequest()).version)
"""

from __future__ import annotations

import importlib
from typing import Any

from ._pb.textrec.v1 import recognizer_pb2, recognizer_pb2_grpc

__all__ = ["recognizer_pb2", "recognizer_pb2_grpc", "grpc_service_pb2", "grpc_service_pb2_grpc"]

_LAZY = {
    "grpc_service_pb2": "textrec_client._pb.inference.grpc_service_pb2",
    "grpc_service_pb2_grpc": "textrec_client._pb.inference.grpc_service_pb2_grpc",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
