"""The TorchServe peer's handler: textrec's `small` model read with textrec's preprocessing and
greedy decoding by the PyTorch reference network (recognizer.py and textrec_ref, packed into the
model archive with the model's manifest.json; the weights are the archive's serialized file,
textrec's model.safetensors).

TorchServe's frontend gathers up to `batchSize` requests within `maxBatchDelay` ms and hands them
to a worker process as one list; every request's `data` (or `body`) is one encoded image. The
answer to each is its text, UTF-8.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from ts.torch_handler.base_handler import BaseHandler


class TextrecHandler(BaseHandler):
    def initialize(self, context) -> None:
        model_dir = context.system_properties["model_dir"]
        sys.path.insert(0, model_dir)
        from recognizer import Recognizer

        # A textrec model folder: the archive's manifest.json and its serialized file.
        folder = tempfile.mkdtemp(prefix="textrec-model-")
        shutil.copy(os.path.join(model_dir, "manifest.json"), folder)
        serialized = context.manifest["model"]["serializedFile"]
        shutil.copy(os.path.join(model_dir, serialized), os.path.join(folder, "model.safetensors"))
        self.recognizer = Recognizer(folder)
        self.initialized = True

    def preprocess(self, data):
        images = []
        for request in data:
            image = request.get("data") or request.get("body")
            if isinstance(image, str):
                image = image.encode("latin-1")
            images.append(bytes(image))
        return images

    def inference(self, data, *args, **kwargs):
        return self.recognizer(data)

    def postprocess(self, data):
        return [text.encode("utf-8") for text in data]
