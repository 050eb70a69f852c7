"""What both peers run per batch of encoded images: textrec's preprocessing and greedy decoding
with the PyTorch reference network (benches/reference/textrec_ref), on textrec's safetensors.
The same steps as the Python grpcio server of the serving benchmark (serve_py.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from textrec_ref.model import load_model_dir, valid_columns
from textrec_ref.preprocess import collate, decode_gray, prepare


class Recognizer:
    """A textrec model folder (manifest.json + model.safetensors), read with greedy decoding."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = load_model_dir(folder)
        self.cfg = self.folder.manifest["preprocessing"]
        self.max_len = self.folder.net.arch.max_text_len

    def caps(self, batch: torch.Tensor, widths: torch.Tensor) -> list[int]:
        """The longest reading textrec's server allows each line: 3/4 of its feature columns
        (`max_chars_for_frames` in model/src/net/recognizer.rs: a character is at least two
        columns wide, with a margin), at most the architecture's `max_text_len`."""
        enc = self.folder.net.encoder
        stride, cols = enc.stem_stride[1], -(-batch.shape[3] // enc.stem_stride[1])
        for _, s in enc.stage_strides:
            if s != 1:
                stride, cols = stride * s, -(-cols // s)
        frames = valid_columns(widths, stride, cols).tolist()
        return [min(max(f * 3 // 4, 1), self.max_len) for f in frames]

    def __call__(self, images: list[bytes]) -> list[str]:
        """The text of each encoded image, in one padded forward pass."""
        lines = [prepare(decode_gray(data), self.cfg) for data in images]
        batch, widths = collate(lines, self.cfg)
        with torch.inference_mode():
            tokens, _eos, _fed, _logits = self.folder.net.greedy_decode(batch, widths, self.max_len)
        # Greedy decoding reads each line independently, so cutting a reading at its cap is what
        # stopping there gives.
        return [self.folder.tokenizer.decode(ids[:cap]) for ids, cap in zip(tokens, self.caps(batch, widths))]
