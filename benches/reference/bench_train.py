"""PyTorch side of the training benchmark: the reference network trained on the exact batches
and initial weights that `train_bench dump DIR` wrote (worker/examples/train_bench.rs).

    python benches/reference/bench_train.py DIR [--threads 2] [--warmup 4] [--steps 20] [--compile]

One step is what textrec's trainer does: reseed, train-mode forward, CE + CTC loss, backward,
global-norm clipping to 1.0, AdamW (lr 1e-3 with textrec's warm-up/cosine schedule, betas
(0.9, 0.98), eps 1e-8, weight decay 0.01 on matrices and kernels except embeddings and norms).
`torch.optim.AdamW` runs with its defaults on the CPU (the per-parameter loop; foreach and fused
kernels are opt-in there). With --compile the forward and loss run through `torch.compile`
(inductor); a failure is reported in the JSON line instead of a number. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textrec_ref.model import Recognizer, load_model_dir  # noqa: E402

SCHEDULE_STEPS = 1000
LR, WARMUP, MIN_LR_RATIO = 1e-3, 200, 0.05
BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.98), 1e-8, 0.01, 1.0

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def lr_at(completed: int) -> float:
    """worker/src/train/schedule.rs: linear warm-up, then cosine decay to a floor."""
    if completed < WARMUP:
        return LR * (completed + 1) / WARMUP
    progress = min((completed - WARMUP) / max(SCHEDULE_STEPS - WARMUP, 1), 1.0)
    floor = LR * MIN_LR_RATIO
    return floor + (LR - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decays(name: str, p: torch.Tensor) -> bool:
    """worker/src/train/optimizer.rs `decays`."""
    lower = name.lower()
    return p.dim() >= 2 and "emb" not in lower and "pos_" not in lower and "norm" not in lower


def load_batches(path: Path) -> list[Batch]:
    named = load_file(str(path))
    out = []
    k = 0
    while f"b{k}.images" in named:
        out.append(
            tuple(named[f"b{k}.{n}"] for n in ("images", "widths", "tgt_in", "tgt_out", "target_lengths"))
        )
        k += 1
    return out


def make_loss_fn(net: Recognizer) -> Callable[..., torch.Tensor]:
    def loss_fn(images, widths, tgt_in, tgt_out, lengths):  # type: ignore[no-untyped-def]
        logits, ctc, ctc_lengths = net(images, widths, tgt_in)
        return net.loss(logits, ctc, ctc_lengths, tgt_out, lengths)

    return loss_fn


def run(directory: Path, threads: int, warmup: int, steps: int, compile_: bool) -> dict:
    torch.set_num_threads(threads)
    net = load_model_dir(directory / "model").net.train()
    batches = load_batches(directory / "batches.safetensors")
    named = list(net.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    loss_fn = make_loss_fn(net)
    if compile_:
        loss_fn = torch.compile(loss_fn, dynamic=True)
    params = [p for _, p in named]
    losses: list[float] = []
    samples = 0
    started = compile_started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
            samples = 0
        images, widths, tgt_in, tgt_out, lengths = batches[step % len(batches)]
        torch.manual_seed(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_fn(images, widths, tgt_in, tgt_out, lengths)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        samples += images.shape[0]
        losses.append(loss.item())
    secs = time.perf_counter() - started
    return {
        "impl": "PyTorch eager" + (" + torch.compile" if compile_ else ""),
        "threads": threads,
        "steps": steps,
        "batch": batches[0][0].shape[0],
        "samples_per_s": samples / secs,
        "s_per_step": secs / steps,
        "warmup_s": started - compile_started,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="run forward + loss through torch.compile")
    args = parser.parse_args()
    torch.set_num_interop_threads(1)
    try:
        record = run(args.dir, args.threads, args.warmup, args.steps, args.compile)
    except Exception as e:  # torch.compile failing here is a result to report, not a crash
        if not args.compile:
            raise
        traceback.print_exc()
        record = {"impl": "PyTorch eager + torch.compile", "error": f"{type(e).__name__}: {e}"[:500]}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
