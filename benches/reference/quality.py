"""Quality benchmark: CER/WER of a textrec model vs Tesseract on lines shaped like users' lines.

    python benches/reference/quality.py [--model DIR] [--data DIR ...] [--count 300] [--json]
    python benches/reference/quality.py --seed default --seed 11 --seed 22 --by-family

Unless --data names tesstrain folders, two sets are rendered by `textrec-worker synth`: prose
the training corpus does not contain (Debian package descriptions), at printed-line lengths
(mean 45 characters, up to 100), augmentation 0.3, `synth`'s default seed (which differs from
the seed training validates on); one set in the training fonts, one in the unseen validation
fonts (FreeSerif, Havana, Cabin Sketch, Bebas Neue). textrec reads each set with `textrec-worker
eval --json --predictions`, Tesseract with `tesseract LIST - --psm 7` (one text line per image,
English model, LSTM engine), one process for the whole set so that its start-up is paid once,
as textrec's is. Both run on one thread (OMP_THREAD_LIMIT=1, --threads 1). CER is computed here
with the definition of model/src/metrics.rs (case-sensitive; whitespace runs collapsed and
trimmed; errors and reference characters summed over lines), overall and by reference length,
and once more with letter case ignored (the "no-case" column: how much of the CER is case alone),
and textrec's is checked against the number `eval` reports itself. One draw of 300 lines is
one sample: --seed (repeatable) renders the pair of sets once per seed and sums each reader's
CER up over the draws (mean, min, max), and --by-family adds a set per unseen family. `eval` also reports how well
textrec's line confidence picks out the lines it read wrong (AUROC, and at a few thresholds the
share flagged and the CER of the rest); that is printed under each set.

--independent renders the independent evaluation sets instead: text from the plain-text
documentation under /usr/share/doc, in the training fonts and in the three font packages
reserved for evaluation, which no training or validation set ever uses. They are the one
measurement nothing in the recipe was chosen on; use them to report, not to choose.
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
    # Character errors with letter case ignored: how much of the CER is case alone (a font
    # whose lowercase r is drawn like a small capital R, a reader that capitalizes it).
    caseless_char_errors: int = 0
    chars: int = 0
    word_errors: int = 0
    words: int = 0
    lines: int = 0

    def add(self, reference: str, hypothesis: str) -> None:
        r, h = normalize(reference), normalize(hypothesis)
        self.char_errors += edit_distance(list(r), list(h))
        self.caseless_char_errors += edit_distance(list(r.lower()), list(h.lower()))
        self.chars += len(r)
        rw, hw = r.split(), h.split()
        self.word_errors += edit_distance(rw, hw)
        self.words += len(rw)
        self.lines += 1

    def merge(self, other: "Counts") -> None:
        self.char_errors += other.char_errors
        self.caseless_char_errors += other.caseless_char_errors
        self.chars += other.chars
        self.word_errors += other.word_errors
        self.words += other.words
        self.lines += other.lines

    @property
    def cer(self) -> float:
        return self.char_errors / self.chars if self.chars else float(self.char_errors > 0)

    @property
    def cer_caseless(self) -> float:
        return self.caseless_char_errors / self.chars if self.chars else float(self.caseless_char_errors > 0)

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


BUCKETS = [20, 40, 60, 80, 100]


def bucket_of(reference: str) -> str:
    n = len(normalize(reference))
    lo = 0
    for hi in BUCKETS:
        if n <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f">{BUCKETS[-1]}"


class Scores:
    """Counts overall and by reference length bucket."""

    def __init__(self) -> None:
        self.total = Counts()
        self.by_length: dict[str, Counts] = {}

    def add(self, reference: str, hypothesis: str) -> None:
        line = Counts()
        line.add(reference, hypothesis)
        self.total.merge(line)
        self.by_length.setdefault(bucket_of(reference), Counts()).merge(line)

    def as_dict(self, seconds: float) -> dict:
        order = {b: i for i, b in enumerate([f"{lo}-{hi}" for lo, hi in zip([0] + [b + 1 for b in BUCKETS], BUCKETS)] + [f">{BUCKETS[-1]}"])}
        return {
            "cer": self.total.cer, "cer_caseless": self.total.cer_caseless, "wer": self.total.wer, "lines": self.total.lines, "seconds": seconds,
            "ms_per_line": 1000 * seconds / max(self.total.lines, 1),
            "by_length": {k: {"cer": c.cer, "lines": c.lines}
                          for k, c in sorted(self.by_length.items(), key=lambda kv: order[kv[0]])},
        }


def run_textrec(worker: Path, model: str, data: Path, refs: dict[str, str], threads: int,
                decode: str | None) -> dict:
    with tempfile.TemporaryDirectory() as predictions:
        started = time.perf_counter()
        out = subprocess.run(
            [str(worker), "eval", "--model", model, "--data", str(data), "--json",
             "--predictions", predictions, "--device", "cpu", "--threads", str(threads)]
            + (["--decode", decode] if decode else []),
            check=True, capture_output=True, text=True,
        )
        secs = time.perf_counter() - started
        reported = json.loads(out.stdout.strip().splitlines()[-1])
        scores = Scores()
        for name, reference in refs.items():
            scores.add(reference, (Path(predictions) / f"{name}.txt").read_text().strip("\n"))
    if abs(scores.total.cer - reported["cer"]) > 1e-9:
        raise SystemExit(f"CER mismatch: eval says {reported['cer']}, recomputed {scores.total.cer}")
    result = scores.as_dict(secs)
    # How well the line confidence picks out the lines read wrong (eval computes it).
    result["confidence"] = reported.get("confidence")
    return result


def run_tesseract(data: Path, refs: dict[str, str]) -> dict:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    names = list(refs)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{image_of(data, n)}\n" for n in names))
        started = time.perf_counter()
        out = subprocess.run(["tesseract", str(listing), "-", "--psm", "7", "-l", "eng"],
                             check=True, capture_output=True, text=True, env=env)
        secs = time.perf_counter() - started
    # One page per image, each ended by a form feed.
    pages = out.stdout.split("\f")
    if len(pages) < len(names):
        raise SystemExit(f"tesseract returned {len(pages)} pages for {len(names)} images")
    scores = Scores()
    for name, page in zip(names, pages):
        scores.add(refs[name], page)
    return scores.as_dict(secs)


UNSEEN_FONTS = ["FreeSerif", "Havana", "Cabin Sketch", "Bebas Neue"]


# The fonts reserved for independent evaluation, one folder per Debian package (as `synth
# --independent-evaluation` finds them under /usr/share/fonts).
RESERVED_FONTS = {"bwht": "opentype/bwht", "femkeklaver": "truetype/femkeklaver",
                  "kaushanscript": "opentype/kaushanscript"}


def render(worker: Path, out: Path, count: int, synth_args: list[str], seed: int | None) -> None:
    cmd = [str(worker), "synth", "--out", str(out), "--count", str(count),
           "--augment", "0.3", "--min-chars", "8", "--max-chars", "100", "--mean-chars", "45", *synth_args]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")


def seed_arg(value: str) -> int | None:
    """A --seed value: a number, or `default` for synth's own seed."""
    return None if value == "default" else int(value)


def fonts_args(fonts: list[str]) -> list[str]:
    return [a for f in fonts for a in ("--font", f)]


def rendered_sets(root: Path, seeds: list[int | None], by_family: bool,
                  independent: bool) -> dict[str, tuple[Path, list[str], int | None]]:
    """The sets to render: name -> (folder, synth arguments, seed). One pair of sets per seed
    (the training fonts and the unseen fonts together), plus one set per unseen family with
    --by-family. With --independent, the pair is documentation text in the training fonts and
    in the fonts reserved for evaluation, and the families are those fonts' packages."""
    if independent:
        base = ["--independent-evaluation"]
        kinds = {"doc-training-fonts": base + ["--training-fonts"], "doc-reserved-fonts": base}
        if by_family:
            kinds.update({f"doc-{name}": base + ["--font", folder] for name, folder in RESERVED_FONTS.items()})
    else:
        base = ["--split", "descriptions"]
        kinds = {"training-fonts": base, "unseen-fonts": base + fonts_args(UNSEEN_FONTS)}
        if by_family:
            kinds.update({f.lower().replace(" ", "-"): base + fonts_args([f]) for f in UNSEEN_FONTS})
    sets = {}
    for seed in seeds:
        for kind, synth_args in kinds.items():
            name = kind if seed is None else f"{kind}@{seed}"
            sets[name] = (root / name, synth_args, seed)
    return sets


def summary(results: dict) -> dict:
    """Per kind of set rendered at several seeds: each reader's CER over the seeds (mean, min,
    max) and the sets' count, so one lucky or unlucky draw of lines is not read as the model's
    figure."""
    kinds: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, r in results.items():
        kind = name.split("@")[0]
        for reader in ("textrec", "tesseract"):
            if reader in r:
                cer = r[reader]["cer"]
                kinds.setdefault(kind, {}).setdefault(reader, []).append((cer, r[reader].get("cer_caseless", cer)))
    def over(v: list[tuple[float, float]]) -> dict:
        cers = [c for c, _ in v]
        return {"sets": len(v), "mean": sum(cers) / len(v), "min": min(cers), "max": max(cers),
                "caseless_mean": sum(c for _, c in v) / len(v)}
    return {kind: {reader: over(v) for reader, v in readers.items()}
            for kind, readers in kinds.items() if max(len(v) for v in readers.values()) > 1}


def length_stats(refs: dict[str, str]) -> dict:
    lengths = sorted(len(normalize(r)) for r in refs.values())
    return {"mean": sum(lengths) / len(lengths), "median": lengths[len(lengths) // 2], "max": lengths[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("TEXTREC_QUALITY_MODEL", "builtin:small"),
                        help="textrec model folder, URL or builtin:NAME (env TEXTREC_QUALITY_MODEL; default: the pretrained model)")
    parser.add_argument("--data", type=Path, action="append",
                        help="tesstrain folder to evaluate on (repeatable; default: render two sets)")
    parser.add_argument("--count", type=int, default=300, help="lines to render per set")
    parser.add_argument("--worker", type=Path, default=default_worker(), help="textrec-worker binary")
    parser.add_argument("--threads", type=int, default=1, help="libtorch threads of textrec eval")
    parser.add_argument("--decode", choices=["joint", "attention", "ctc", "ctc-lm"],
                        help="textrec's decoding (default: the model's own, from its manifest)")
    parser.add_argument("--no-tesseract", action="store_true", help="score textrec only")
    parser.add_argument("--seed", type=seed_arg, action="append", dest="seeds",
                        help="render the sets with this `synth` seed, or `default` for synth's own (repeatable: "
                             "a pair of sets per seed, summarized over the seeds; default: synth's own seed)")
    parser.add_argument("--by-family", action="store_true",
                        help="also render one set per unseen font family")
    parser.add_argument("--independent", action="store_true",
                        help="render the independent evaluation sets instead (`synth --independent-evaluation`): "
                             "text from /usr/share/doc, in the training fonts and in the fonts reserved for "
                             "evaluation (apt-get install fonts-bwht fonts-femkeklaver fonts-kaushanscript); "
                             "with --by-family also one set per reserved package. Report what they say; never "
                             "tune on them")
    parser.add_argument("--keep", type=Path, help="render the sets into this folder and keep them")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if args.data:
            sets = {d.name: d for d in args.data}
        else:
            planned = rendered_sets(root, args.seeds or [None], args.by_family, args.independent)
            sets = {}
            for name, (folder, synth_args, seed) in planned.items():
                if not any(folder.glob("*.gt.txt")):
                    render(args.worker, folder, args.count, synth_args, seed)
                sets[name] = folder
        results = {}
        for name, data in sets.items():
            refs = references(data)
            if not refs:
                raise SystemExit(f"{data}: no NAME.gt.txt files")
            r = {"lengths": length_stats(refs),
                 "textrec": run_textrec(args.worker, args.model, data, refs, args.threads, args.decode)}
            if not args.no_tesseract:
                r["tesseract"] = run_tesseract(data, refs)
            results[name] = r
    over_seeds = summary(results)
    if args.json:
        print(json.dumps({"model": args.model, "decode": args.decode, "sets": results, "over_seeds": over_seeds}))
        return
    print(f"model {args.model} (decode {args.decode or 'as the manifest says'}), one thread each")
    for name, r in results.items():
        st = r["lengths"]
        print(f"\n{name}: {r['textrec']['lines']} lines, {st['mean']:.1f} chars mean, "
              f"{st['median']} median, {st['max']} max")
        systems = [k for k in ("textrec", "tesseract") if k in r]
        buckets = list(r["textrec"]["by_length"])
        print(f"{'system':<12} {'CER':>7} {'no-case':>7} {'WER':>7} {'ms/line':>8}  " + " ".join(f"{b:>9}" for b in buckets))
        for k in systems:
            x = r[k]
            cells = " ".join(f"{x['by_length'].get(b, {}).get('cer', float('nan')):>9.4f}" for b in buckets)
            print(f"{k:<12} {x['cer']:>7.4f} {x['cer_caseless']:>7.4f} {x['wer']:>7.4f} {x['ms_per_line']:>8.1f}  {cells}")
        conf = r["textrec"].get("confidence")
        if conf:
            auroc = "n/a" if conf["auroc"] is None else f"{conf['auroc']:.3f}"
            print(f"textrec confidence: {conf['wrong_lines']} of {conf['lines']} lines not read exactly, AUROC {auroc}")
            for t in conf["thresholds"]:
                pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
                kept = "-" if t["cer_kept"] is None else f"{t['cer_kept']:.4f}"
                print(f"  below {t['below']:.1f}: {pct(t['flagged'])} flagged, {pct(t['wrong_among_flagged'])} of them wrong, "
                      f"{pct(t['wrong_caught'])} of wrong lines caught; the rest at CER {kept}")
    if over_seeds:
        print("\nover the seeds: CER mean (min-max), and with letter case ignored")
        for kind, readers in over_seeds.items():
            cells = ", ".join(f"{reader} {x['mean']:.4f} ({x['min']:.4f}-{x['max']:.4f}, {x['sets']} sets; "
                              f"no case {x['caseless_mean']:.4f})"
                              for reader, x in readers.items())
            print(f"  {kind}: {cells}")


if __name__ == "__main__":
    sys.exit(main())
