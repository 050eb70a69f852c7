"""Parity of the PyTorch reference with textrec, on what `parity_dump` wrote.

    cargo run -p textrec-model --example parity_dump -- DIR
    TEXTREC_PARITY_DIR=DIR python -m pytest benches/reference/test_parity.py
    python benches/reference/test_parity.py DIR          # the same without pytest

For the `tiny` and `small` presets and for both model folders (`random`: textrec's random
init; `model`: perturbed norms/statistics/biases and an EOS bias that makes decoding stop at
varied lengths) it checks, in fp32 on the CPU:
- teacher-forced logits and CTC log-probabilities: max |diff| <= 1e-4;
- greedy decoding with the key/value cache: the same tokens, text and stopping step, and
  step logits within 1e-4;
- preprocessing: the reference's preparation of the PNG lines against textrec's batch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textrec_ref.model import load_model_dir  # noqa: E402
from textrec_ref.preprocess import collate, decode_gray, prepare  # noqa: E402

TOLERANCE = 1e-4
PRESETS = ["tiny", "small"]
FOLDERS = ["random", "model"]


def parity_dir() -> Path:
    value = os.environ.get("TEXTREC_PARITY_DIR")
    if not value:
        pytest.skip("TEXTREC_PARITY_DIR is not set (scripts/parity.sh sets it)")
    return Path(value)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_logits_and_greedy(preset: str, folder: str) -> None:
    root = parity_dir() / preset
    torch.set_num_threads(1)
    inputs = load_file(str(root / "inputs.safetensors"))
    expected = load_file(str(root / "expected.safetensors"))
    doc = json.loads((root / "expected.json").read_text())
    model = load_model_dir(root / folder)
    net = model.net
    images, widths, tgt_in = inputs["images"], inputs["widths"], inputs["tgt_in"]

    with torch.no_grad():
        logits, ctc, _ = net(images, widths, tgt_in)
    diffs = {"logits": max_abs_diff(logits, expected[f"{folder}.logits"])}
    if ctc is not None:
        diffs["ctc"] = max_abs_diff(ctc, expected[f"{folder}.ctc_log_probs"])

    max_len = net.arch.max_text_len
    traced = net.greedy_decode(images, widths, max_len, run_all_steps=True)
    _, _, fed, step_logits = traced
    assert torch.equal(fed, expected[f"{folder}.step_tokens"]), "greedy fed different tokens"
    diffs["step_logits"] = max_abs_diff(step_logits, expected[f"{folder}.step_logits"])

    tokens, eos_probs, _, _ = net.greedy_decode(images, widths, max_len)
    for i, want in enumerate(doc["models"][folder]["greedy"]):
        assert tokens[i] == want["tokens"], f"line {i}: tokens differ"
        assert model.tokenizer.decode(tokens[i]) == want["text"]
        assert (eos_probs[i] is None) == (want["eos_prob"] is None), f"line {i}: stop differs"
        if eos_probs[i] is not None:
            assert abs(eos_probs[i] - want["eos_prob"]) <= TOLERANCE

    print(f"{preset}/{folder}: " + ", ".join(f"max|Δ{k}| {v:.2e}" for k, v in diffs.items()))
    for name, diff in diffs.items():
        assert diff <= TOLERANCE, f"{preset}/{folder}: max |Δ{name}| = {diff:.3e} > {TOLERANCE}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preprocessing(preset: str) -> None:
    root = parity_dir() / preset
    inputs = load_file(str(root / "inputs.safetensors"))
    cfg = json.loads((root / "model" / "manifest.json").read_text())["preprocessing"]
    pngs = sorted((root / "lines").glob("line-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    lines = [prepare(decode_gray(p.read_bytes()), cfg) for p in pngs]
    images, widths = collate(lines, cfg)
    assert torch.equal(widths, inputs["widths"]), f"widths {widths.tolist()} != {inputs['widths'].tolist()}"
    diff = max_abs_diff(images, inputs["images"])
    print(f"{preset}: preprocessing max|Δ| {diff:.2e}")
    assert diff <= TOLERANCE, f"preprocessing differs by up to {diff:.3e}"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.environ["TEXTREC_PARITY_DIR"] = sys.argv[1]
    sys.exit(pytest.main([__file__, "-q", "-s"]))
