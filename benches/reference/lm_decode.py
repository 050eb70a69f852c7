"""What a character language model would buy textrec's CTC decoding: an experiment.

    python benches/reference/lm_decode.py --model models/small --data DIR [--data DIR ...]
        [--order 6] [--weights 0.5,0.5 1.0,1.5] [--beam 12]

textrec reads a line with the CTC head's best label per frame (`--decode ctc`) or rescores that
reading against the decoder's (`joint`); neither knows which letter sequences are English. This
script measures what a prefix beam search over the CTC head's log-probabilities, scored with a
character n-gram model, reads instead, on the same weights:

- the log-probabilities come from the reference network (`textrec_ref`, the PyTorch twin that
  `test_parity.py` holds to textrec's numbers), one line at a time;
- the language model is an interpolated Witten-Bell character n-gram counted over the training
  corpus only (every `fortunes` file and the `wamerican` word list, mapped into the model's
  charset), so the package descriptions the sets are made of stay unseen text;
- the search keeps `--beam` prefixes and, per frame, the 6 most likely labels; each character
  adds `alpha * log P_lm(char | history) + beta` (beta offsets the model's bias against long
  readings); the end of the line adds `alpha * log P_lm(end)`.

It prints CER per set (the definition of model/src/metrics.rs) for greedy CTC and for each
`alpha,beta` pair, and the search's time per line (Python, so an upper bound on a native one).
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import edit_distance, normalize  # noqa: E402
from textrec_ref.model import load_model_dir  # noqa: E402
from textrec_ref.preprocess import collate, decode_gray, prepare  # noqa: E402

BLANK = 0
FIRST_CHAR_ID = 3  # PAD (the CTC blank), BOS, EOS, then the charset
START, END = "\x02", "\x03"
NEG = -1e30


class CharNgram:
    """Interpolated Witten-Bell character n-gram of order `order`."""

    def __init__(self, lines: list[str], order: int, vocab: int) -> None:
        self.order = order
        self.vocab = vocab
        self.counts = [collections.Counter() for _ in range(order)]
        self.context = [collections.Counter() for _ in range(order)]
        for line in lines:
            s = START * (order - 1) + line + END
            for i in range(order - 1, len(s)):
                for n in range(order):
                    h = s[i - n : i]
                    self.counts[n][(h, s[i])] += 1
                    self.context[n][h] += 1
        self.types = [collections.Counter() for _ in range(order)]
        for n in range(order):
            for h, _ in self.counts[n]:
                self.types[n][h] += 1
        self.cache: dict[tuple[str, str], float] = {}

    def logp(self, history: str, char: str) -> float:
        history = (START * (self.order - 1) + history)[-(self.order - 1) :]
        key = (history, char)
        if key in self.cache:
            return self.cache[key]
        p = 1.0 / self.vocab
        for n in range(self.order):
            h = history[len(history) - n :] if n else ""
            seen = self.context[n].get(h, 0)
            if not seen:
                continue
            lam = seen / (seen + self.types[n][h])
            p = lam * self.counts[n].get((h, char), 0) / seen + (1 - lam) * p
        self.cache[key] = math.log(p)
        return self.cache[key]


def corpus_lines(charset: set[str]) -> list[str]:
    """The training corpus as `textrec-worker train` reads it: fortunes and the word list."""
    keep = lambda s: " ".join("".join(c for c in s if c in charset).split())  # noqa: E731
    lines = []
    for f in sorted(Path("/usr/share/games/fortunes").iterdir()):
        if f.is_dir() or f.suffix in (".dat", ".u8") or f.is_symlink():
            continue
        for line in f.read_text(encoding="utf-8", errors="ignore").split("\n"):
            if line.strip() != "%" and keep(line):
                lines.append(keep(line))
    words = Path("/usr/share/dict/american-english").read_text(encoding="utf-8", errors="ignore")
    words = [w for w in words.split() if all(c in charset for c in w)]
    lines += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    return lines


def logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b <= NEG else a + math.log1p(math.exp(b - a))


def greedy(lp: np.ndarray, chars: list[str]) -> str:
    out, prev = [], BLANK
    for k in lp.argmax(1):
        if k != prev and k >= FIRST_CHAR_ID:
            out.append(chars[k - FIRST_CHAR_ID])
        prev = k
    return "".join(out)


def beam_search(lp, chars, lm: CharNgram, alpha: float, beta: float, beam: int) -> str:
    """CTC prefix beam search; each prefix holds (log P ending in blank, in a label)."""
    beams = {"": (0.0, NEG)}
    for row in lp:
        top = [int(k) for k in np.argsort(-row)[:6] if k >= FIRST_CHAR_ID]
        nxt = collections.defaultdict(lambda: [NEG, NEG])
        for prefix, (p_blank, p_label) in beams.items():
            total = logaddexp(p_blank, p_label)
            e = nxt[prefix]
            e[0] = logaddexp(e[0], total + row[BLANK])
            last = prefix[-1] if prefix else None
            for k in top:
                c = chars[k - FIRST_CHAR_ID]
                bonus = alpha * lm.logp(prefix, c) + beta
                if c == last:
                    # The same label again: a repeat merges unless a blank came between.
                    e[1] = logaddexp(e[1], p_label + row[k])
                    grown = nxt[prefix + c]
                    grown[1] = logaddexp(grown[1], p_blank + row[k] + bonus)
                else:
                    grown = nxt[prefix + c]
                    grown[1] = logaddexp(grown[1], total + row[k] + bonus)
        ranked = sorted(nxt.items(), key=lambda kv: -logaddexp(*kv[1]))[:beam]
        beams = {p: (v[0], v[1]) for p, v in ranked}
    return max(beams, key=lambda p: logaddexp(*beams[p]) + alpha * lm.logp(p, END))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/small", help="textrec model folder")
    ap.add_argument("--data", action="append", required=True, help="tesstrain folder (repeat)")
    ap.add_argument("--order", type=int, default=6, help="n-gram order (characters)")
    ap.add_argument("--weights", nargs="+", default=["0.5,0.5", "1.0,1.5"], help="alpha,beta pairs")
    ap.add_argument("--beam", type=int, default=12, help="prefixes kept per frame")
    args = ap.parse_args()
    torch.set_num_threads(1)

    folder = load_model_dir(args.model)
    cfg = folder.manifest["preprocessing"]
    chars = folder.tokenizer.chars
    started = time.time()
    lm = CharNgram(corpus_lines(set(chars)), args.order, len(chars) + 1)
    print(f"language model: order {args.order}, {time.time() - started:.0f} s to count", file=sys.stderr)

    sets = {}
    for d in args.data:
        pngs = sorted(Path(d).glob("*.png"))
        refs = [p.with_suffix(".gt.txt").read_text(encoding="utf-8").strip() for p in pngs]
        lps = []
        for p in pngs:
            images, widths = collate([prepare(decode_gray(p.read_bytes()), cfg)], cfg)
            with torch.no_grad():
                _, _, features, valid = folder.net.encode(images, widths)
                lp = folder.net.ctc_log_probs(features, valid)[:, 0, :]
            lps.append(lp[: int(valid[0])].numpy())
        sets[Path(d).name] = (lps, refs)

    print("| decoding | " + " | ".join(f"{n} CER | ms/line" for n in sets) + " |")
    print("| --- |" + " ---: | ---: |" * len(sets))
    for spec in ["greedy"] + args.weights:
        cells = []
        for lps, refs in sets.values():
            errors = chars_total = 0
            t0 = time.time()
            for lp, ref in zip(lps, refs):
                if spec == "greedy":
                    hyp = greedy(lp, chars)
                else:
                    alpha, beta = map(float, spec.split(","))
                    hyp = beam_search(lp, chars, lm, alpha, beta, args.beam)
                r, h = normalize(ref), normalize(hyp)
                errors += edit_distance(list(r), list(h))
                chars_total += len(r)
            ms = (time.time() - t0) / max(len(refs), 1) * 1000
            cells.append(f"{errors / max(chars_total, 1):.4f} | {ms:.1f}")
        label = "greedy CTC" if spec == "greedy" else f"beam {args.beam} + LM, alpha,beta {spec}"
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
