#!/usr/bin/env python3
"""Recognizes the text of line images with a textrec server.

    python recognize.py IMAGE... [--target host:port] [--timeout S] [--retries N] [--batch] [--json]

Prints one line per image: the file name, the line confidence and the recognized text (or the
error). With --batch all images go in one RecognizeBatch call. Exits 1 if any image failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from textrec_client import Prediction, Recognizer, TextrecError


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="encoded line images (PNG, JPEG, TIFF, BMP)")
    ap.add_argument("--target", default="localhost:50051", help="gRPC host:port (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    ap.add_argument("--retries", type=int, default=2, help="retries on UNAVAILABLE")
    ap.add_argument("--batch", action="store_true", help="send all images in one call")
    ap.add_argument("--json", action="store_true", help="print JSON lines")
    ap.add_argument("--model", action="store_true", help="print the served model first")
    args = ap.parse_args(argv)

    failed = 0
    with Recognizer(args.target, timeout=args.timeout, retries=args.retries) as rec:
        if args.model:
            info = rec.model_info()
            print(f"model {info.version} from {info.source}, loaded {info.loaded_at}", file=sys.stderr)
        try:
            if args.batch:
                results = rec.recognize_batch(args.images, return_exceptions=True)
            else:
                results = []
                for path in args.images:
                    try:
                        results.append(rec.recognize(path))
                    except TextrecError as e:
                        results.append(e)
        except TextrecError as e:  # the whole call failed (server down, deadline, ...)
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path, r in zip(args.images, results):
            if isinstance(r, Prediction):
                if args.json:
                    print(json.dumps({"image": path, "text": r.text, "confidence": r.confidence}))
                else:
                    print(f"{path}\t{r.confidence:.3f}\t{r.text}")
            else:
                failed += 1
                if args.json:
                    print(json.dumps({"image": path, "error": r.code.name, "message": r.message}))
                else:
                    print(f"{path}\terror\t{r.code.name}: {r.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
