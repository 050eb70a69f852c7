"""Quality benchmark: CER/WER of a textrec model vs Tesseract on one synthetic evaluation set.

    python benches/reference/quality.py --model DIR [--data DIR | --count 300] [--json]

The set is rendered by `textrec-worker synth` (held-out `validation` text, the training fonts,
augmentation 0.3, `synth`'s default seed, which differs from the seed training validates on)
unless --data names a tesstrain folder. textrec reads it with `textrec-worker eval --json
--predictions`, Tesseract with `tesseract IMG - --psm 7` (one text line, English model, LSTM
engine), one process per line with OMP_THREAD_LIMIT=1. Both CERs are computed here with the
definition of model/src/metrics.rs (case-sensitive; whitespace runs collapsed and trimmed;
errors and reference characters summed over lines), and textrec's is checked against the
number `eval` reports itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def normalize(text: str) -> str:
    """Whitespace runs to one space, trimmed (metrics.rs `normalize`)."""
    return " ".join(text.split())


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance with unit costs."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, x in enumerate(a):
        diagonal, row[0] = row[0], i + 1
        for j, y in enumerate(b):
            substitution = diagonal + (x != y)
            diagonal = row[j + 1]
            row[j + 1] = min(substitution, row[j] + 1, diagonal + 1)
    return row[len(b)]


@dataclass
class Counts:
    char_errors: int = 0
    chars: int = 0
    word_errors: int = 0
    words: int = 0
    lines: int = 0

    def add(self, reference: str, hypothesis: str) -> None:
        r, h = normalize(reference), normalize(hypothesis)
        self.char_errors += edit_distance(list(r), list(h))
        self.chars += len(r)
        rw, hw = r.split(), h.split()
        self.word_errors += edit_distance(rw, hw)
        self.words += len(rw)
        self.lines += 1

    @property
    def cer(self) -> float:
        return self.char_errors / self.chars if self.chars else float(self.char_errors > 0)

    @property
    def wer(self) -> float:
        return self.word_errors / self.words if self.words else float(self.word_errors > 0)


def default_worker() -> Path:
    bin_dir = os.environ.get("TEXTREC_BIN_DIR")
    candidates = [Path(bin_dir) / "textrec-worker"] if bin_dir else []
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates += [target / "release" / "textrec-worker", target / "debug" / "textrec-worker"]
    return next((c for c in candidates if c.exists()), candidates[0])


def references(data: Path) -> dict[str, str]:
    """Line id (file stem) to ground truth, from NAME.gt.txt files."""
    return {p.name[: -len(".gt.txt")]: p.read_text().strip("\n") for p in sorted(data.glob("*.gt.txt"))}


def image_of(data: Path, name: str) -> Path:
    return next(p for ext in ("png", "tif", "jpg") if (p := data / f"{name}.{ext}").exists())


def run_textrec(worker: Path, model: str, data: Path, refs: dict[str, str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as predictions:
        started = time.perf_counter()
        out = subprocess.run(
            [str(worker), "eval", "--model", model, "--data", str(data), "--json",
             "--predictions", predictions, "--device", "cpu", "--threads", str(threads)],
            check=True, capture_output=True, text=True,
        )
        secs = time.perf_counter() - started
        reported = json.loads(out.stdout.strip().splitlines()[-1])
        counts = Counts()
        for name, reference in refs.items():
            counts.add(reference, (Path(predictions) / f"{name}.txt").read_text().strip("\n"))
    if abs(counts.cer - reported["cer"]) > 1e-9:
        raise SystemExit(f"CER mismatch: eval says {reported['cer']}, recomputed {counts.cer}")
    return {"cer": counts.cer, "wer": counts.wer, "lines": counts.lines, "seconds": secs}


def run_tesseract(data: Path, refs: dict[str, str]) -> dict:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    counts = Counts()
    started = time.perf_counter()
    for name, reference in refs.items():
        out = subprocess.run(
            ["tesseract", str(image_of(data, name)), "-", "--psm", "7", "-l", "eng"],
            check=True, capture_output=True, text=True, env=env,
        )
        counts.add(reference, out.stdout)
    secs = time.perf_counter() - started
    return {"cer": counts.cer, "wer": counts.wer, "lines": counts.lines, "seconds": secs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("TEXTREC_QUALITY_MODEL", "textrec-data/small/model"),
                        help="textrec model folder or URL (env TEXTREC_QUALITY_MODEL)")
    parser.add_argument("--data", type=Path, help="tesstrain folder to evaluate on (default: render one)")
    parser.add_argument("--count", type=int, default=300, help="lines to render")
    parser.add_argument("--max-chars", type=int, default=32)
    parser.add_argument("--worker", type=Path, default=default_worker(), help="textrec-worker binary")
    parser.add_argument("--threads", type=int, default=2, help="libtorch threads of textrec eval")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "eval-set"
            subprocess.run(
                [str(args.worker), "synth", "--out", str(data), "--count", str(args.count),
                 "--split", "validation", "--augment", "0.3", "--max-chars", str(args.max_chars)],
                check=True, capture_output=True,
            )
        refs = references(data)
        if not refs:
            raise SystemExit(f"{data}: no NAME.gt.txt files")
        results = {
            "textrec": run_textrec(args.worker, args.model, data, refs, args.threads),
            "tesseract": run_tesseract(data, refs),
        }
    if args.json:
        print(json.dumps({"model": args.model, "lines": len(refs), **results}))
        return
    print(f"quality on {len(refs)} synthetic lines (held-out text, training fonts); model {args.model}")
    print(f"{'system':<28} {'CER':>8} {'WER':>8} {'lines/s':>9}")
    names = {"textrec": "textrec eval", "tesseract": "tesseract 5 --psm 7 (eng)"}
    for key, r in results.items():
        print(f"{names[key]:<28} {r['cer']:>8.4f} {r['wer']:>8.4f} {r['lines'] / r['seconds']:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
