"""textrec's server against peer model servers, side by side: `textrec-worker serve`, KServe's
`ModelServer` and TorchServe, each serving the same model its own idiomatic way, driven by one
load generator (worker/benches/peers.rs). Run through `benches/run.sh --only peers`.

    benches/run.sh --only peers [--model DIR] [--servers textrec,kserve,kserve-1t,torchserve]
        [--closed 1,8,32,128] [--rates 5,10,20,...] [--seconds 10] [--repeats 3] [--json FILE]

- The model: `--model` (default models/small), copied into a temporary folder whose manifest
  says `"decoding": "attention"`, so that textrec reads with the greedy decoding the peers run
  (the PyTorch reference network, benches/reference/textrec_ref, on the same safetensors).
- The images: `--images` (64) lines rendered by `textrec-worker synth` (held-out text, training
  fonts, up to `--max-chars` 24 characters), the same for every server.
- The servers run one at a time: started, measured by the load generator (readiness, warm-up
  over every image, idle memory, closed loop at each `--closed` concurrency, open loop at each
  `--rates` arrival rate until the server saturates), stopped. `--repeats` repetitions, the
  order of the servers rotated from one to the next. Each server's process tree (TorchServe's
  Java frontend and Python workers, KServe's processes) is measured as a whole.
- Correctness: every server's text for every image (from the warm-up) is compared; the
  differences are listed. Answers under load that differ from the server's own warm-up answer
  are counted too.
- Output: markdown tables to paste into BENCHMARKS.md, and with `--json FILE` every
  measurement.

The peers are installed by benches/peers/setup.sh into $TEXTREC_CACHE/peers/{kserve,torchserve};
a peer whose venv (or, for TorchServe, Java) is missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("TEXTREC_CACHE", Path.home() / ".cache" / "textrec"))
VENVS = CACHE / "peers"
MODEL_NAME = "textrec"
LABELS = {"textrec": "textrec", "kserve": "KServe", "kserve-1t": "KServe, 1 thread", "torchserve": "TorchServe"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_text(cmd: list[str], **kw) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<{e}>"


def load_generator() -> str:
    """Path of the load generator (built by benches/run.sh; cargo only reports it here)."""
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "textrec-worker", "--bench", "peers", "--no-run", "--message-format=json"],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "peers" and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("cargo did not report the peers bench executable")


class Server:
    """One server: how to start it, and what the load generator needs to reach it."""

    protocol = "oip"

    def __init__(self, key: str, work: Path, model: Path) -> None:
        self.key, self.work, self.model = key, work, model
        self.label = LABELS[key]

    def missing(self) -> str | None:
        """Why this server cannot run here (None: it can)."""
        return None

    def versions(self) -> dict:
        return {}

    def command(self, port: int) -> tuple[list[str], dict, Path]:
        raise NotImplementedError

    def start(self, log: Path) -> tuple[subprocess.Popen, int]:
        port = free_port()
        cmd, env, cwd = self.command(port)
        print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        return proc, port


class Textrec(Server):
    def versions(self) -> dict:
        return {"textrec": run_text([worker_binary(), "--version"]).split()[-1]}

    def command(self, port: int):
        cmd = [worker_binary(), "serve", "--model", str(self.model), "--grpc-addr", f"127.0.0.1:{port}",
               "--http-addr", f"127.0.0.1:{free_port()}"]
        return cmd, dict(os.environ, RUST_LOG="warn"), self.work


class KServe(Server):
    venv = VENVS / "kserve"
    # PyTorch's intra-op threads in the server process; 0: PyTorch's default (one per core).
    torch_threads = 0

    def missing(self):
        if not (self.venv / "bin" / "python").exists():
            return f"not installed ({self.venv} missing; run benches/peers/setup.sh kserve)"
        return None

    def versions(self):
        code = "import importlib.metadata as m, torch; print(m.version('kserve'), torch.__version__)"
        k, t = (run_text([str(self.venv / "bin" / "python"), "-c", code]).split() + ["?", "?"])[:2]
        return {"kserve": k, "torch": t}

    def command(self, port: int):
        cmd = [str(self.venv / "bin" / "python"), str(HERE / "kserve" / "server.py"), "--model_dir", str(self.model),
               "--model_name", MODEL_NAME, "--grpc_port", str(port), "--http_port", str(free_port()),
               "--torch_threads", str(self.torch_threads)]
        return cmd, dict(os.environ), self.work


class KServeOneThread(KServe):
    """KServe with one PyTorch thread: its one process runs one request at a time, and spinning
    OpenMP threads of a default-sized pool can collapse on cores that are shared."""

    torch_threads = 1


class TorchServe(Server):
    protocol = "torchserve"
    venv = VENVS / "torchserve"
    # TorchServe's batching: the frontend gathers up to batchSize requests, waiting at most
    # maxBatchDelay ms, and hands them to one worker as one list. textrec's own limits.
    batch_size = 16
    max_batch_delay_ms = 5

    def missing(self):
        if not (self.venv / "bin" / "torchserve").exists():
            return f"not installed ({self.venv} missing; run benches/peers/setup.sh torchserve)"
        if not shutil.which("java"):
            return "no Java runtime (apt-get install default-jre-headless)"
        return None

    def versions(self):
        code = "import importlib.metadata as m, torch; print(m.version('torchserve'), torch.__version__)"
        t, torch = (run_text([str(self.venv / "bin" / "python"), "-c", code]).split() + ["?", "?"])[:2]
        java = run_text(["java", "-version"]).splitlines()
        return {"torchserve": t, "torch": torch, "java": java[0] if java else "?"}

    def archive(self) -> Path:
        """The model archive (built once): handler, the model's manifest and safetensors."""
        store = self.work / "model-store"
        mar = store / f"{MODEL_NAME}.mar"
        if mar.exists():
            return store
        stage = self.work / "archive-files"
        stage.mkdir(parents=True)
        shutil.copytree(REPO / "benches" / "reference" / "textrec_ref", stage / "textrec_ref",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(HERE / "recognizer.py", stage)
        shutil.copy(self.model / "manifest.json", stage)
        store.mkdir()
        cmd = [str(self.venv / "bin" / "torch-model-archiver"), "--model-name", MODEL_NAME, "--version", "1.0",
               "--serialized-file", str(self.model / "model.safetensors"),
               "--handler", str(HERE / "torchserve" / "handler.py"),
               "--extra-files", str(stage), "--export-path", str(store)]
        print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        return store

    def command(self, port: int):
        store = self.archive()
        # Workers: TorchServe's default, one per logical CPU (default_workers_per_model unset).
        models = {MODEL_NAME: {"1.0": {
            "marName": f"{MODEL_NAME}.mar", "batchSize": self.batch_size, "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": 120,
        }}}
        config = self.work / "config.properties"
        config.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{free_port()}",
            f"management_address=http://127.0.0.1:{free_port()}",
            f"metrics_address=http://127.0.0.1:{free_port()}",
            f"grpc_inference_port={port}",
            f"grpc_management_port={free_port()}",
            f"model_store={store}",
            f"load_models={MODEL_NAME}.mar",
            f"models={json.dumps(models)}",
            "install_py_dep_per_model=false",
            # TorchServe's performance guide for CPUs: its launcher pins each worker to its own
            # cores and sizes the worker's thread pool to them.
            "cpu_launcher_enable=true",
            "cpu_launcher_args=--use_logical_core",
            "",
        ]))
        cmd = [str(self.venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--model-store", str(store), "--ts-config", str(config)]
        env = dict(os.environ, PATH=f"{self.venv / 'bin'}:{os.environ['PATH']}")
        return cmd, env, self.work  # TorchServe writes logs/ into its working directory


SERVERS = {"textrec": Textrec, "kserve": KServe, "kserve-1t": KServeOneThread, "torchserve": TorchServe}


def worker_binary() -> str:
    return str(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "textrec-worker")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s."""
    for sig, wait in [(signal.SIGTERM, 30), (signal.SIGKILL, 10)]:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # Workers that outlive their parent are in the group too.
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


def measure(server: Server, loadgen: str, images: Path, args, tag: str) -> dict:
    log = server.work / f"server-{tag}.log"
    out = server.work / f"result-{tag}.json"
    proc, port = server.start(log)
    env = dict(
        os.environ,
        TEXTREC_PEERS_PROTOCOL=server.protocol,
        TEXTREC_PEERS_ADDR=f"http://127.0.0.1:{port}",
        TEXTREC_PEERS_MODEL=MODEL_NAME,
        TEXTREC_PEERS_NAME=server.label,
        TEXTREC_PEERS_PID=str(proc.pid),
        TEXTREC_PEERS_CLOSED=args.closed,
        TEXTREC_PEERS_RATES=args.rates,
        TEXTREC_PEERS_SECONDS=str(args.seconds),
        TEXTREC_PEERS_WARMUP_ROUNDS=str(args.warmup_rounds),
        TEXTREC_BENCH_IMAGES=str(images),
        TEXTREC_BENCH_JSON=str(out),
    )
    try:
        done = subprocess.run([loadgen], env=env)
        if done.returncode != 0 or proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print(f"{server.label}: FAILED (load generator exit {done.returncode}); server log {log}:\n  "
                  + "\n  ".join(tail), file=sys.stderr)
            return {"error": f"load generator exit {done.returncode}", "log_tail": tail}
        return json.loads(out.read_text())
    finally:
        stop(proc)


def med(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """Per step (closed c / open rate): medians over repetitions; errors summed; peaks maxed."""
    ok = [r for r in runs if "error" not in r]
    steps: dict[tuple, list[dict]] = {}
    for r in ok:
        for s in r["steps"]:
            key = ("closed", s["concurrency"]) if s["mode"] == "closed" else ("open", s["offered_rps"])
            steps.setdefault(key, []).append(s)
    out = {}
    for key, ss in steps.items():
        out[key] = {
            "runs": len(ss),
            "throughput_rps": med([s["throughput_rps"] for s in ss]),
            "p50_ms": med([s["p50_ms"] for s in ss]),
            "p99_ms": med([s["p99_ms"] for s in ss]),
            "errors": sum(s["errors"] for s in ss),
            "text_changed": sum(s["text_changed"] for s in ss),
            "cpu_s_per_1000": med([s["cpu_s_per_1000"] for s in ss]),
            "peak_rss_mib": max(s["peak_rss_mib"] for s in ss),
            "saturated": sum(s["saturated"] for s in ss),
        }
    return {
        "steps": out,
        "idle_rss_mib": med([r["idle_rss_mib"] for r in ok]),
        "idle_pss_mib": med([r["idle_pss_mib"] for r in ok]),
        "peak_rss_mib": max((s["peak_rss_mib"] for r in ok for s in r["steps"]), default=None),
        "processes": med([r["processes"] for r in ok]),
        "ready_s": med([r["ready_s"] for r in ok]),
        "failed": len(runs) - len(ok),
    }


def fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def print_tables(order: list[str], summary: dict, skipped: dict, args, repeats: int) -> None:
    ran = [k for k in order if k in summary]
    labels = [LABELS[k] for k in ran]
    print(f"\n### Closed loop: {args.seconds:g} s per step, median of {repeats} repetition(s)\n")
    print("| concurrency | " + " | ".join(f"{l} req/s | p50 ms | p99 ms" for l in labels) + " |")
    print("| ---: | " + " | ".join("---: | ---: | ---:" for _ in labels) + " |")
    for c in [int(c) for c in args.closed.split(",") if c.strip()]:
        cells = []
        for k in ran:
            s = summary[k]["steps"].get(("closed", c))
            if s is None:
                cells.append("— | — | —")
                continue
            err = f" ({s['errors']} errors)" if s["errors"] else ""
            cells.append(f"{fmt(s['throughput_rps'])}{err} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if rates:
        print(f"\n### Open loop: fixed arrival rates, {args.seconds:g} s per step; each server's ladder stops "
              "after the first rate it cannot sustain (marked *: served < 95% of offered or > 1% errors)\n")
        print("| offered req/s | " + " | ".join(f"{l} req/s | p50 ms | p99 ms" for l in labels) + " |")
        print("| ---: | " + " | ".join("---: | ---: | ---:" for _ in labels) + " |")
        for rate in rates:
            cells = []
            for k in ran:
                s = summary[k]["steps"].get(("open", rate))
                if s is None:
                    cells.append("— | — | —")
                    continue
                mark = "*" if s["saturated"] else ""
                err = f" ({s['errors']} errors)" if s["errors"] else ""
                cells.append(f"{fmt(s['throughput_rps'])}{mark}{err} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])}")
            if any(c != "— | — | —" for c in cells):
                print(f"| {rate:g} | " + " | ".join(cells) + " |")
    closed = [int(c) for c in args.closed.split(",") if c.strip()]
    print("\n### Resources: the server's whole process tree\n")
    print(f"| server | processes | idle RSS MiB | idle PSS MiB | peak RSS MiB | CPU s per 1000 answered requests, "
          f"c = {' / '.join(map(str, closed))} | errors (all steps) | start-up s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in ran:
        s = summary[k]
        cpu = " / ".join(fmt(s["steps"].get(("closed", c), {}).get("cpu_s_per_1000"), 1) for c in closed)
        errors = sum(v["errors"] for v in s["steps"].values())
        print(f"| {LABELS[k]} | {fmt(s['processes'], 0)} | {fmt(s['idle_rss_mib'], 0)} | {fmt(s['idle_pss_mib'], 0)} | "
              f"{fmt(s['peak_rss_mib'], 0)} | {cpu} | {errors} | {fmt(s['ready_s'])} |")
    for k, why in skipped.items():
        print(f"\n{LABELS[k]}: skipped: {why}")


def correctness(order: list[str], results: dict) -> dict:
    """Every server's text for every image (last warm-up of each repetition) compared."""
    texts = {}
    for k in order:
        ok = [r for r in results.get(k, []) if "error" not in r]
        if ok:
            texts[k] = ok[0]
            for r in ok[1:]:
                if r["texts"] != ok[0]["texts"]:
                    print(f"{LABELS[k]}: texts differ between repetitions", file=sys.stderr)
    if not texts:
        return {}
    names = next(iter(texts.values()))["images"]
    diffs = []
    for i, name in enumerate(names):
        answers = {k: t["texts"][i] for k, t in texts.items()}
        if len(set(answers.values())) > 1:
            diffs.append({"image": name, **answers})
    changed = {k: sum(s["text_changed"] for r in results[k] if "error" not in r for s in r["steps"]) for k in texts}
    servers = ", ".join(LABELS[k] for k in texts)
    print(f"\n### Correctness: {len(names)} images, {servers}\n")
    if len(texts) < 2:
        print("Only one server answered: nothing to compare.")
    elif diffs:
        print(f"{len(diffs)} of {len(names)} images read differently:")
        for d in diffs:
            print(f"- {d['image']}: " + "; ".join(f"{LABELS[k]} {d[k]!r}" for k in texts))
    else:
        print(f"Every server returned the same text for all {len(names)} images.")
    print("Answers under load that differ from the server's own warm-up answer: "
          + ", ".join(f"{LABELS[k]} {n}" for k, n in changed.items()))
    return {"images": len(names), "differences": diffs, "changed_under_load": changed,
            "example": {k: t["texts"][:3] for k, t in texts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "small"), help="textrec model folder")
    parser.add_argument("--servers", default="textrec,kserve,kserve-1t,torchserve",
                        help="of " + ", ".join(SERVERS))
    parser.add_argument("--closed", default="1,8,32,128", help="closed-loop concurrencies")
    parser.add_argument("--rates", default="5,10,20,40,60,80,100,130,160,200,250,320",
                        help="open-loop arrival rates, req/s, ascending ('' for none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions, server order rotated")
    parser.add_argument("--warmup-rounds", type=int, default=2, help="passes over every image before measuring")
    parser.add_argument("--images", type=int, default=64, help="rendered lines in the image set")
    parser.add_argument("--max-chars", type=int, default=24, help="longest rendered line")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--workdir", help="keep the model copy, images, archives and server logs here "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()

    start_load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs; load average {start_load:.2f} at start "
          "(above ~0.5 means other processes shared the cores)")
    loadgen = load_generator()
    with tempfile.TemporaryDirectory(prefix="textrec-peers-") as tmp:
        tmp = Path(args.workdir or tmp)
        if args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        # The model, read by every server with greedy (attention) decoding.
        model = tmp / "model"
        model.mkdir()
        shutil.copy(Path(args.model) / "model.safetensors", model)
        manifest = json.loads((Path(args.model) / "manifest.json").read_text())
        manifest["decoding"] = "attention"
        # Greedy attention decoding needs no language model; the copy carries none.
        lm = manifest.pop("language_model", None)
        if lm:
            manifest["files"] = [f for f in manifest["files"] if f["path"] != lm["file"]]
        (model / "manifest.json").write_text(json.dumps(manifest, indent=2))
        images = tmp / "lines"
        subprocess.run([worker_binary(), "synth", "--out", str(images), "--count", str(args.images),
                        "--max-chars", str(args.max_chars)], check=True, stdout=subprocess.DEVNULL)

        servers, skipped = {}, {}
        for key in [k.strip() for k in args.servers.split(",") if k.strip()]:
            work = tmp / key
            work.mkdir()
            s = SERVERS[key](key, work, model)
            why = s.missing()
            if why:
                print(f"{s.label}: SKIPPED: {why}", file=sys.stderr)
                skipped[key] = why
            else:
                servers[key] = s
        order = list(servers)
        versions = {k: s.versions() for k, s in servers.items()}
        print("versions: " + "; ".join(
            f"{LABELS[k]}: " + ", ".join(f"{name} {v}" for name, v in vs.items()) for k, vs in versions.items()))
        results: dict[str, list[dict]] = {k: [] for k in order}
        for rep in range(args.repeats):
            turn = order[rep % len(order):] + order[: rep % len(order)] if order else []
            print(f"repetition {rep + 1}/{args.repeats}: {', '.join(LABELS[k] for k in turn)}", file=sys.stderr)
            for k in turn:
                results[k].append(measure(servers[k], loadgen, images, args, f"{rep}"))

    summary = {k: summarize(results[k]) for k in order}
    print_tables(order, summary, skipped, args, args.repeats)
    check = correctness(order, results)
    end_load = os.getloadavg()[0]
    print(f"\nload average {start_load:.2f} at the start, {end_load:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "load_start": start_load, "load_end": end_load},
            "settings": vars(args),
            "versions": versions,
            "skipped": skipped,
            "runs": results,
            "summary": {k: {**v, "steps": [{"mode": m, "at": at, **s} for (m, at), s in v["steps"].items()]}
                        for k, v in summary.items()},
            "correctness": check,
        }, indent=2))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
