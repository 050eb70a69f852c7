"""textrec's preprocessing (model/src/preprocess/), from an image file to the network input.

1. decode to 8-bit gray the way the Rust `image` crate does (transparent pixels composited on
   white, colour to luma with the sRGB weights 0.2126/0.7152/0.0722 and integer division);
2. resize to the manifest's ``height`` keeping the aspect ratio (width rounded, clamped to
   ``max_width``) with the `image` crate's separable Catmull-Rom resampler: vertical pass into
   f32, then horizontal pass rounded to u8, filter support widened by the scale when shrinking;
3. normalise: background = median gray level, ink = the 1st or 99th percentile on the far side,
   mapped linearly to 0..1 and clamped, with a minimum contrast of 48 levels;
4. collate: zero-pad on the right to the widest line rounded up to ``width_multiple``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

MIN_CONTRAST = 48.0


def decode_gray(data: bytes) -> np.ndarray:
    """``[H, W]`` uint8 gray image from encoded bytes."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("L", "P") and "transparency" not in img.info:
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode == "I;16":
        return (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)
    has_alpha = img.mode in ("LA", "RGBA", "PA") or "transparency" in img.info
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    luma = (2126 * rgba[..., 0] + 7152 * rgba[..., 1] + 722 * rgba[..., 2]) // 10000
    if not has_alpha:
        return luma.astype(np.uint8)
    a = rgba[..., 3]
    return ((luma * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _catmull_rom(x: np.ndarray) -> np.ndarray:
    """The B=0, C=0.5 Mitchell-Netravali cubic, evaluated in f32 like the `image` crate."""
    a = np.abs(x).astype(np.float32)
    a2, a3 = a * a, a * a * a
    near = (np.float32(9.0) * a3 + np.float32(-15.0) * a2 + np.float32(6.0)) / np.float32(6.0)
    far = (np.float32(-3.0) * a3 + np.float32(15.0) * a2 + np.float32(-24.0) * a + np.float32(12.0)) / np.float32(6.0)
    return np.where(a < 1, near, np.where(a < 2, far, np.float32(0.0))).astype(np.float32)


def _weights(src: int, dst: int) -> list[tuple[int, np.ndarray]]:
    """For each output index: the first input index and the normalised f32 filter weights."""
    ratio = np.float32(src) / np.float32(dst)
    sratio = max(ratio, np.float32(1.0))
    support = np.float32(2.0) * sratio
    out = []
    for o in range(dst):
        centre = (np.float32(o) + np.float32(0.5)) * ratio
        left = min(max(int(np.floor(centre - support)), 0), src - 1)
        right = min(max(int(np.ceil(centre + support)), left + 1), src)
        taps = (np.arange(left, right, dtype=np.float32) - (centre - np.float32(0.5))) / sratio
        w = _catmull_rom(taps)
        total = np.float32(0.0)
        for v in w:  # sequential f32 sum, as in Rust
            total = np.float32(total + v)
        out.append((left, (w / total).astype(np.float32)))
    return out


def resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image::imageops::resize(.., FilterType::CatmullRom)`` for one 8-bit channel."""
    h, w = gray.shape
    if (h, w) == (height, width):
        return gray.copy()
    src = gray.astype(np.float32)
    tmp = np.zeros((height, w), dtype=np.float32)
    for y, (left, ws) in enumerate(_weights(h, height)):
        acc = np.zeros(w, dtype=np.float32)
        for i, wt in enumerate(ws):
            acc = acc + src[left + i] * wt
        tmp[y] = acc
    out = np.zeros((height, width), dtype=np.float32)
    for x, (left, ws) in enumerate(_weights(w, width)):
        acc = np.zeros(height, dtype=np.float32)
        for i, wt in enumerate(ws):
            acc = acc + tmp[:, left + i] * wt
        out[:, x] = acc
    # f32::round rounds halves away from zero; the values are non-negative here.
    return np.floor(np.clip(out, 0.0, 255.0) + np.float32(0.5)).astype(np.uint8)


def normalize(gray: np.ndarray) -> np.ndarray:
    """Ink 1.0, background 0.0 (see the module docs)."""
    hist = np.bincount(gray.ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    n = gray.size

    def percentile(q: float) -> float:
        target = round((n - 1) * q)
        return float(np.searchsorted(cumulative, target, side="right"))

    dark, median, light = percentile(0.01), percentile(0.5), percentile(0.99)
    light_on_dark = median - dark < light - median
    ink, sign = (light, 1.0) if light_on_dark else (dark, -1.0)
    scale = np.float32(1.0) / np.float32(max(sign * (ink - median), MIN_CONTRAST))
    values = (np.float32(sign) * (gray.astype(np.float32) - np.float32(median))) * scale
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def prepare(gray: np.ndarray, cfg: dict) -> np.ndarray:
    """Resize and normalise one line: ``[height, width]`` float32."""
    h, w = gray.shape
    height = max(int(cfg["height"]), 1)
    scaled = math.floor(w * height / h + 0.5)  # f64::round: halves away from zero
    width = min(max(scaled, 1), max(int(cfg["max_width"]), 1))
    return normalize(resize(gray, width, height))


def collate(lines: list[np.ndarray], cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 1, H, W]`` zero-padded on the right, and their widths ``[B]`` (int64)."""
    multiple = max(int(cfg["width_multiple"]), 1)
    widest = max([line.shape[1] for line in lines] + [1])
    w = -(-widest // multiple) * multiple
    batch = np.zeros((len(lines), 1, int(cfg["height"]), w), dtype=np.float32)
    for k, line in enumerate(lines):
        batch[k, 0, :, : line.shape[1]] = line
    widths = torch.tensor([line.shape[1] for line in lines], dtype=torch.int64)
    return torch.from_numpy(batch), widths
