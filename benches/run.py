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


def json_line(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run `cmd` and parse the last line of its stdout as JSON; a timeout becomes an error record."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": "PyTorch eager + torch.compile", "error": f"did not finish within {timeout:.0f} s"}
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
        commands = [[bench, "run", tmp], py] + ([] if args.no_compile else [py + ["--compile"]])
        # Interleaved rounds: load from other processes hits every implementation alike.
        runs: list[list[dict]] = [[] for _ in commands]
        for _ in range(args.repeats):
            for i, cmd in enumerate(commands):
                timeout = args.compile_timeout if "--compile" in cmd else None
                runs[i].append(json_line(cmd, env if i == 0 else None, timeout))
    rows = []
    for results in runs:
        ok = sorted((r for r in results if "error" not in r), key=lambda r: r["samples_per_s"])
        if not ok:
            rows.append(results[-1])
            continue
        median = dict(ok[len(ok) // 2])
        median["range"] = (ok[0]["samples_per_s"], ok[-1]["samples_per_s"])
        rows.append(median)
    eager = rows[1]["samples_per_s"]
    print(f"\n## Training: preset {args.preset}, batch {args.batch}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps, median of {args.repeats} interleaved runs, CPU")
    print(f"| {'implementation':<30} | {'samples/s':>9} | {'min-max':>11} | {'s/step':>7} | {'vs eager':>8} | "
          f"{'peak RSS MiB':>12} | {'first / last loss':>17} |")
    print(f"|{'-' * 32}|{'-' * 10}:|{'-' * 12}:|{'-' * 8}:|{'-' * 9}:|{'-' * 13}:|{'-' * 18}:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']:<30} | failed: {r['error']} |")
            continue
        lo, hi = r["range"]
        print(f"| {r['impl']:<30} | {r['samples_per_s']:>9.2f} | {lo:>5.2f}-{hi:<5.2f} | {r['s_per_step']:>7.3f} | "
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
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per implementation")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--compile-timeout", type=float, default=900, help="seconds per torch.compile run")
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
