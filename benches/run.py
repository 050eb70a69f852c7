"""Side-by-side benchmarks of textrec and its PyTorch reference; run through benches/run.sh.

Training: textrec's training step (model/examples/train_bench.rs) vs the same step in PyTorch
eager and with torch.compile (benches/reference/bench_train.py), on identical initial weights
and batches, the same thread count, warm-up then timed steps; samples/s, ratio to PyTorch eager.

Quality: CER/WER of a trained model vs Tesseract (benches/reference/quality.py), when a model
is given (--model or TEXTREC_QUALITY_MODEL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benches" / "reference"


def release_bin(name: str) -> Path:
    return Path(os.environ["CARGO_TARGET_DIR"]) / "release" / name


def json_line(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `cmd` and parse the last line of its stdout as JSON."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def training(args: argparse.Namespace) -> None:
    bench = str(release_bin("examples/train_bench"))
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TEXTREC_BENCH_PRESET=args.preset, TEXTREC_BENCH_BATCH=str(args.batch))
        subprocess.run([bench, "dump", tmp], check=True, env=env)
        env.update(
            TEXTREC_BENCH_THREADS=str(args.threads),
            TEXTREC_BENCH_WARMUP=str(args.warmup),
            TEXTREC_BENCH_STEPS=str(args.steps),
        )
        py = [sys.executable, str(REFERENCE / "bench_train.py"), tmp, "--threads", str(args.threads),
              "--warmup", str(args.warmup), "--steps", str(args.steps)]
        rows = [json_line([bench, "run", tmp], env), json_line(py)]
        if not args.no_compile:
            rows.append(json_line(py + ["--compile"]))
    eager = rows[1]["samples_per_s"]
    print(f"\n## Training: preset {args.preset}, batch {args.batch}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps, CPU")
    print(f"| {'implementation':<30} | {'samples/s':>9} | {'s/step':>7} | {'vs eager':>8} | "
          f"{'peak RSS MiB':>12} | {'first / last loss':>17} |")
    print(f"|{'-' * 32}|{'-' * 11}:|{'-' * 8}:|{'-' * 9}:|{'-' * 13}:|{'-' * 18}:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']:<30} | failed: {r['error']} |")
            continue
        print(f"| {r['impl']:<30} | {r['samples_per_s']:>9.2f} | {r['s_per_step']:>7.3f} | "
              f"{r['samples_per_s'] / eager:>7.2f}x | {r['peak_rss_mib']:>12.0f} | "
              f"{r['first_loss']:.4f} / {r['last_loss']:.4f} |")


def quality(args: argparse.Namespace) -> None:
    model = args.model or os.environ.get("TEXTREC_QUALITY_MODEL")
    if not model:
        print("\n## Quality: skipped (give --model or TEXTREC_QUALITY_MODEL)")
        return
    print(f"\n## Quality: {args.lines} lines")
    subprocess.run(
        [sys.executable, str(REFERENCE / "quality.py"), "--model", model, "--count", str(args.lines),
         "--worker", str(release_bin("textrec-worker")), "--threads", str(args.threads)],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["training", "quality"], help="run one part")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TEXTREC_BENCH_THREADS", "2")))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--model", help="trained model folder for the quality part")
    parser.add_argument("--lines", type=int, default=300, help="evaluation lines for the quality part")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start "
          "(above ~0.5 means other processes shared the cores)")
    if args.only in (None, "training"):
        training(args)
    if args.only in (None, "quality"):
        quality(args)


if __name__ == "__main__":
    main()
