"""Side-by-side benchmarks of textrec and its PyTorch reference; run through benches/run.sh.

Training: textrec's training step (worker/examples/train_bench.rs) vs the same step in PyTorch
eager and with torch.compile (benches/reference/bench_train.py), on identical initial weights
and batches, the same thread count, warm-up then timed steps; samples/s, ratio to PyTorch eager.

Serving: `textrec-worker serve` vs the Python grpcio server of the reference
(benches/reference/serve_py.py), batching on and off, at concurrency 1, 8, 32, measured by the
same Rust gRPC client (worker/benches/serve.rs, with TEXTREC_BENCH_PY_SERVER); same model (the
preset with random weights, or --model), rendered lines, thread count and batching limits.

Quality: CER/WER of a trained model vs Tesseract (benches/reference/quality.py), when a model
is given (--model or TEXTREC_QUALITY_MODEL).

Peers (only with --only peers): textrec-worker serve vs KServe and TorchServe serving the same
model, one load generator for all (benches/peers/bench.py; its options follow, e.g. --seconds,
--repeats, --json).
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
                record = json_line(cmd, env if i == 0 else None, timeout)
                runs[i].append(record)
                print(f"    {record.get('impl')}: " + (record["error"] if "error" in record else
                      f"{record['samples_per_s']:.2f} samples/s, warm-up {record.get('warmup_s', 0):.1f} s"),
                      file=sys.stderr, flush=True)
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
          f"{'warm-up s':>9} | {'peak RSS MiB':>12} | {'first / last loss':>17} |")
    print(f"|{'-' * 32}|{'-' * 10}:|{'-' * 12}:|{'-' * 8}:|{'-' * 9}:|{'-' * 10}:|{'-' * 13}:|{'-' * 18}:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']:<30} | failed: {r['error']} |")
            continue
        lo, hi = r["range"]
        print(f"| {r['impl']:<30} | {r['samples_per_s']:>9.2f} | {lo:>5.2f}-{hi:<5.2f} | {r['s_per_step']:>7.3f} | "
              f"{r['samples_per_s'] / eager:>7.2f}x | {r.get('warmup_s', float('nan')):>9.1f} | "
              f"{r['peak_rss_mib']:>12.0f} | "
              f"{r['first_loss']:.4f} / {r['last_loss']:.4f} |")


def serving(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "lines"
        # The image set: rendered text lines (training fonts, held-out text), the same for every server.
        subprocess.run(
            [str(release_bin("textrec-worker")), "synth", "--out", str(images), "--count", str(args.serve_images),
             "--max-chars", str(args.max_chars)],
            check=True, stdout=subprocess.DEVNULL,
        )
        out = Path(tmp) / "serve.json"
        py = f"{sys.executable} {REFERENCE / 'serve_py.py'} --model {{model}} --port {{port}} --threads {{threads}} " \
            "--inference-threads {inference_threads} --max-batch {max_batch} --max-wait-ms {max_wait_ms}"
        env = dict(
            os.environ,
            TEXTREC_BENCH_PRESET=args.preset,
            TEXTREC_BENCH_REQUESTS=str(args.requests),
            TEXTREC_BENCH_CONCURRENCY=args.concurrency,
            TEXTREC_BENCH_MAX_BATCH=str(args.max_batch),
            TEXTREC_BENCH_MAX_WAIT_MS=str(args.max_wait_ms),
            TEXTREC_BENCH_IMAGES=str(images),
            TEXTREC_BENCH_PY_SERVER=py,
            TEXTREC_BENCH_JSON=str(out),
        )
        # Unset: both servers get the thread plan `textrec-worker serve` picks by itself.
        for key, value in [("TEXTREC_BENCH_THREADS", args.serve_threads),
                           ("TEXTREC_BENCH_INFERENCE_THREADS", args.inference_threads)]:
            if value is not None:
                env[key] = str(value)
        if args.model:
            env["TEXTREC_BENCH_MODEL"] = args.model
        if args.no_batching_off:
            env["TEXTREC_BENCH_MODES"] = "inproc,rust-on,py-on"
        cmd = ["cargo", "bench", "-q", "-p", "textrec-worker", "--bench", "serve"]
        print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        result = json.loads(out.read_text())
    rows = {(r["mode"], r["concurrency"]): r for r in result["rows"]}
    print(f"\n## Serving: {result['model']}; {result['images']}; {result.get('inference_threads', 1)} inference threads × {result['threads']} torch threads per server; "
          f"max batch {result['max_batch']}, max wait {result['max_wait_ms']} ms; {result['requests']} requests per run")
    print(f"| {'server':<28} | {'conc':>4} | {'req/s':>7} | {'p50 ms':>8} | {'p99 ms':>8} | {'mean batch':>10} | {'errors':>6} |")
    print(f"|{'-' * 30}|{'-' * 5}:|{'-' * 8}:|{'-' * 9}:|{'-' * 9}:|{'-' * 11}:|{'-' * 7}:|")
    for r in result["rows"]:
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        print(f"| {r['mode']:<28} | {r['concurrency']:>4} | {r['throughput']:>7.2f} | {r['p50_ms']:>8.1f} | "
              f"{r['p99_ms']:>8.1f} | {batch:>10} | {r['errors']:>6} |")
    print(f"\n| {'server':<28} | {'idle RSS MiB':>12} | {'peak RSS under load MiB':>23} | {'VmHWM MiB':>9} |")
    print(f"|{'-' * 30}|{'-' * 13}:|{'-' * 24}:|{'-' * 10}:|")
    for r in result["rss"]:
        print(f"| {r['mode']:<28} | {r['idle_mib']:>12.0f} | {r['peak_under_load_mib']:>23.0f} | {r['hwm_mib']:>9.0f} |")
    if result.get("paired_c1"):
        print("\nConcurrency 1, interleaved in blocks of images (p50 of all requests; median over blocks of "
              "the block's mean latency over in-process's, with its quartiles):")
        for r in result["paired_c1"]:
            print(f"  {r['mode']:<28} p50 {r['p50_ms']:>7.2f} ms ({(r['p50_vs_inproc'] - 1) * 100:+5.1f}%)  "
                  f"blocks {(r['median_block_vs_inproc'] - 1) * 100:+5.1f}% "
                  f"[{(r['block_ratio_p25'] - 1) * 100:+.1f}%, {(r['block_ratio_p75'] - 1) * 100:+.1f}%] vs in-process")
    off, on = rows.get(("textrec gRPC, batching off", 32)), rows.get(("textrec gRPC, batching on", 32))
    if off and on:
        print(f"\ntextrec at concurrency 32, batching on vs off: {on['throughput'] / off['throughput']:.2f}x throughput")
    print("\nTargets (textrec batching on vs Python batching on): throughput ≥ 2x, p99 ≤ 0.5x")
    for c in sorted({r["concurrency"] for r in result["rows"]}):
        rs, py = rows.get(("textrec gRPC, batching on", c)), rows.get(("Python gRPC, batching on", c))
        if rs and py:
            print(f"  concurrency {c:>2}: throughput {rs['throughput'] / py['throughput']:.2f}x, "
                  f"p99 {rs['p99_ms'] / py['p99_ms']:.2f}x")
    print(f"text of the first image identical across servers: {result['texts_agree']}")


def quality(args: argparse.Namespace) -> None:
    model = args.model or os.environ.get("TEXTREC_QUALITY_MODEL")
    if not model:
        print("\n## Quality: skipped (give --model or TEXTREC_QUALITY_MODEL)")
        return
    print(f"\n## Quality: {args.lines} lines per set")
    subprocess.run(
        [sys.executable, str(REFERENCE / "quality.py"), "--model", model, "--count", str(args.lines),
         "--worker", str(release_bin("textrec-worker"))],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["training", "serve", "quality", "peers"], help="run one part")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TEXTREC_BENCH_THREADS", "2")))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per implementation")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--compile-timeout", type=float, default=900, help="seconds per torch.compile run")
    parser.add_argument("--serve-threads", type=int, help="serving: torch threads per inference thread "
                        "(default: what textrec-worker serve picks)")
    parser.add_argument("--inference-threads", type=int, help="serving: inference threads per server "
                        "(default: what textrec-worker serve picks)")
    parser.add_argument("--requests", type=int, default=128, help="serving: requests per run")
    parser.add_argument("--concurrency", default="1,8,32", help="serving: concurrencies, comma-separated")
    parser.add_argument("--max-batch", type=int, default=32, help="serving: largest batch (both servers)")
    parser.add_argument("--max-wait-ms", type=int, default=5, help="serving: longest batching wait (both servers)")
    parser.add_argument("--serve-images", type=int, default=64, help="serving: rendered lines in the image set")
    parser.add_argument("--max-chars", type=int, default=24,
                        help="longest rendered line of the serving image set")
    parser.add_argument("--no-batching-off", action="store_true", help="serving: skip the batching-off servers")
    parser.add_argument("--model", help="trained model folder for the quality part (and serving)")
    parser.add_argument("--lines", type=int, default=300, help="evaluation lines for the quality part")
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--only")
    only, rest = first.parse_known_args()
    if only.only == "peers":
        # The comparison with peer servers has its own runner: every other option is its own.
        os.execv(sys.executable, [sys.executable, str(REPO / "benches" / "peers" / "bench.py"), *rest])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start "
          "(above ~0.5 means other processes shared the cores)")
    if args.only in (None, "training"):
        training(args)
    if args.only in (None, "serve"):
        serving(args)
    if args.only in (None, "quality"):
        quality(args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
