"""Reading each line at several widths: every width's CER alone, and the oracle's.

`textrec-worker recognize|eval|serve --widths` does the reading itself (keeping the most
confident reading); this script measures what that choice is worth: the CER of each width on
its own and of an oracle that always picks the best reading, beside the most confident one.

Each line of a tesstrain folder is stretched horizontally by each factor (height unchanged, so
after preprocessing the network sees the same characters spread over more or fewer frames), every
variant is read by `textrec-worker recognize --confidence`, and for each line the reading with
the highest line confidence is kept. The stretch is done here with Pillow (bicubic) before
textrec's own resize, so the figures differ slightly from `--widths`, which stretches in the
resize itself.

    python3 benches/reference/width_readings.py --data DIR [--data DIR ...] [--model builtin:small]
        [--widths 1,1.1,1.25,1.4,1.6]

CER uses textrec's definition (whitespace runs collapsed, trimmed, case-sensitive, totals over
lines). The stretched copies are written next to each folder as `DIR-xFACTOR/`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import default_worker, edit_distance, image_of, normalize, references  # noqa: E402


def stretched(folder: Path, factor: float, images: list[Path]) -> list[Path]:
    """The lines stretched by `factor`, written once into `DIR-xFACTOR/`."""
    if factor == 1.0:
        return images
    out = folder.parent / f"{folder.name}-x{factor:g}"
    out.mkdir(exist_ok=True)
    for image in images:
        target = out / image.name
        if not target.exists():
            img = Image.open(image).convert("L")
            w, h = img.size
            img.resize((max(1, round(w * factor)), h), Image.BICUBIC).save(target)
    return [out / image.name for image in images]


def read(worker: Path, model: str, images: list[Path]) -> dict[str, tuple[str, float]]:
    """Line id (file stem) to reading and line confidence."""
    cmd = [str(worker), "recognize", "--model", model, "--confidence", "--threads", "1"]
    out = subprocess.run(cmd + [str(p) for p in images], capture_output=True, text=True, check=True).stdout
    readings = {}
    for line in out.splitlines():
        path, text, confidence = line.rsplit("\t", 2)
        readings[Path(path).stem] = (text, float(confidence))
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True, help="tesstrain folder (repeatable)")
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--widths", default="1,1.1,1.25,1.4,1.6", help="stretch factors, comma-separated")
    args = parser.parse_args()
    factors = [float(f) for f in args.widths.split(",")]
    worker = default_worker()
    for folder in args.data:
        refs = {name: normalize(text) for name, text in references(folder).items()}
        names = list(refs)
        images = [image_of(folder, n) for n in names]
        total = sum(len(refs[n]) for n in names)
        readings = {f: read(worker, args.model, stretched(folder, f, images)) for f in factors}
        errors = {f: {n: edit_distance(normalize(readings[f][n][0]), refs[n]) for n in names} for f in factors}
        print(f"{folder} ({len(names)} lines, {total} characters)")
        for f in factors:
            print(f"  width x{f:g}: CER {sum(errors[f].values()) / total:.4f}")
        kept = sum(errors[max(factors, key=lambda f: readings[f][n][1])][n] for n in names)
        oracle = sum(min(errors[f][n] for f in factors) for n in names)
        print(f"  most confident of {len(factors)} widths: CER {kept / total:.4f}")
        print(f"  oracle (best reading of each line): CER {oracle / total:.4f}")


if __name__ == "__main__":
    main()
