"""textrec's recognizer in plain PyTorch, loading textrec's model folders.

The module tree mirrors model/src/net/*.rs, so that ``state_dict()`` keys are exactly the
safetensors names textrec writes (its VarStore paths). The whole name mapping is therefore:

=====================================  =========================================
textrec safetensors name               PyTorch parameter / buffer
=====================================  =========================================
``<any>``                              ``<same name>``
(absent)                               ``*.bn.num_batches_tracked`` (PyTorch-only
                                       BatchNorm counter; unused in eval and with
                                       a fixed momentum, so it is not loaded)
=====================================  =========================================

What the Rust network does, and this one too:

- encoder: conv3x3-BN-ReLU stem, stages of basic residual blocks (the first block of a stage
  strides, with a 1x1 conv-BN shortcut when the shape changes), a 1x1 projection with bias;
  strides per stage [2,2], [2,2], [2,1] (the stem takes the leading factors with fewer stages);
  every feature map is multiplied by a 0/1 mask of each image's valid columns after each
  ReLU and after the projection, so zero padding never leaks into a neighbouring column;
- memory: features + a 2-D sinusoidal encoding (first half of the channels the row, second
  half the column), flattened row-major to ``[B, H'W', d]``, then LayerNorm; cross-attention
  masks the columns past each image's valid width (``ceil(w / 4)``, at least 1);
- decoder: pre-norm layers ``x + drop(SelfAttn(LN1 x))``, ``x + drop(CrossAttn(LN2 x))``,
  ``x + drop(fc2(drop(gelu(fc1(LN3 x)))))`` (exact erf GELU), fused QKV and KV projections,
  attention scaled by ``1/sqrt(d_head)``; token embeddings scaled by ``sqrt(d)`` plus a 1-D
  sinusoidal encoding; final LayerNorm then the output projection (with bias);
- CTC head (when ``ctc_weight > 0``): features (before the position code) averaged over rows;
  with ``ctc_context_layers > 0``, first a 1-D sinusoidal code is added and pre-norm encoder
  layers ``x + drop(SelfAttn(LN1 x))`` (bidirectional, padding frames masked out of the keys),
  ``x + drop(fc2(drop(gelu(fc1(LN2 x)))))`` run over the frames, then a final LayerNorm and a
  projection whose output is added to the frames;
- ids: PAD 0, BOS 1, EOS 2, then the manifest's charset in order. Greedy decoding never emits
  PAD or BOS, stops an item at EOS or after ``max_text_len`` characters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

PAD, BOS, EOS = 0, 1, 2
SPECIALS = 3
# Downsampling per stage (height, width); see SCHEDULE in model/src/net/resnet.rs.
SCHEDULE = [(2, 2), (2, 2), (2, 1)]


@dataclass(frozen=True)
class Architecture:
    """The manifest's ``architecture`` (contract/src/config/model.rs)."""

    encoder_channels: list[int]
    encoder_blocks: list[int]
    d_model: int
    heads: int
    decoder_layers: int
    ff_dim: int
    dropout: float
    max_text_len: int
    ctc_weight: float
    ctc_context_layers: int = 0


class Tokenizer:
    """PAD, BOS, EOS, then one id per charset character (first occurrence wins)."""

    def __init__(self, charset: str) -> None:
        self.chars: list[str] = []
        self.ids: dict[str, int] = {}
        for c in charset:
            if c not in self.ids:
                self.ids[c] = SPECIALS + len(self.chars)
                self.chars.append(c)

    @property
    def vocab_size(self) -> int:
        return SPECIALS + len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if SPECIALS <= i < self.vocab_size:
                out.append(self.chars[i - SPECIALS])
        return "".join(out)


def valid_columns(widths: Tensor, stride: int, max_cols: int) -> Tensor:
    """``ceil(w / stride)`` clamped to ``1..=max_cols``."""
    return torch.div(widths.long() + (stride - 1), stride, rounding_mode="floor").clamp(1, max_cols)


def column_mask(widths: Tensor, stride: int, w: int, dtype: torch.dtype) -> Tensor:
    """``[B, 1, 1, w]``: 1 on each image's valid columns at ``stride``, 0 on the padding."""
    valid = valid_columns(widths, stride, w)
    cols = torch.arange(w, device=widths.device)
    return (cols.unsqueeze(0) < valid.unsqueeze(1)).to(dtype).view(-1, 1, 1, w)


def sinusoid(start: int, n: int, dim: int) -> Tensor:
    """``[n, dim]`` encodings of positions ``start..start+n``, computed in f64 like textrec."""
    pos = np.arange(start, start + n, dtype=np.float64)[:, None]
    k = np.arange(dim)
    angle = pos / np.power(10000.0, (2 * (k // 2)).astype(np.float64) / dim)
    table = np.where(k % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(table.astype(np.float32))


def grid(h: int, w: int, dim: int) -> Tensor:
    """``[dim, h, w]``: the row code in the first ``dim // 2`` channels, the column code after."""
    row_dim = dim // 2
    col_dim = dim - row_dim
    rows = sinusoid(0, h, row_dim).t().unsqueeze(2).expand(row_dim, h, w)
    cols = sinusoid(0, w, col_dim).t().unsqueeze(1).expand(col_dim, h, w)
    return torch.cat([rows, cols], 0)


class ConvBn(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = ConvBn(c_in, c_out, 3, stride)
        self.conv2 = ConvBn(c_out, c_out, 3, (1, 1))
        needs_shortcut = c_in != c_out or stride != (1, 1)
        self.shortcut = ConvBn(c_in, c_out, 1, stride) if needs_shortcut else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = F.relu(self.conv1(x)) * mask
        y = self.conv2(y)
        short = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(y + short) * mask


class Encoder(nn.Module):
    def __init__(self, channels: list[int], blocks: list[int], d_model: int) -> None:
        super().__init__()
        n = len(channels)
        stem_factors = max(len(SCHEDULE) - n, 0)
        sh, sw = 1, 1
        for fh, fw in SCHEDULE[:stem_factors]:
            sh, sw = sh * fh, sw * fw
        self.stem_stride = (sh, sw)
        self.stem = ConvBn(1, channels[0], 3, self.stem_stride)
        self.stage_strides: list[tuple[int, int]] = []
        self.stages = nn.ModuleList()
        c_in = channels[0]
        for i, (c, b) in enumerate(zip(channels, blocks)):
            idx = stem_factors + i
            stride = SCHEDULE[idx] if idx < len(SCHEDULE) else (1, 1)
            stage = nn.ModuleList()
            for j in range(b):
                stage.append(BasicBlock(c_in, c, stride if j == 0 else (1, 1)))
                c_in = c
            self.stages.append(stage)
            self.stage_strides.append(stride)
        self.proj = nn.Conv2d(c_in, d_model, 1)

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[B, d, H/8, W/4]`` (zero past the valid columns) and valid columns ``[B]``."""
        stride_w = self.stem_stride[1]
        w_stem = -(-images.shape[3] // stride_w)
        mask = column_mask(widths, stride_w, w_stem, images.dtype)
        x = F.relu(self.stem(images)) * mask
        for stage, (_, s) in zip(self.stages, self.stage_strides):
            if s != 1:
                stride_w *= s
                mask = column_mask(widths, stride_w, -(-x.shape[3] // s), images.dtype)
            for block in stage:
                x = block(x, mask)
        features = self.proj(x) * mask
        return features, valid_columns(widths, stride_w, features.shape[3])


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.heads = heads

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).chunk(3, -1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._project(x)
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))

    def forward_masked(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """Bidirectional attention; ``key_mask`` ``[B, 1, 1, T]`` is true on valid positions."""
        q, k, v = self._project(x)
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)))

    def step(self, x: Tensor, cache: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        """One new position ``[B, 1, d]`` attending to ``cache`` (keys, values) and itself."""
        q, k, v = self._project(x)
        if cache is not None:
            k = torch.cat([cache[0], k], 2)
            v = torch.cat([cache[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(merge_heads(y)), [k, v]


class CrossAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.heads = heads

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(memory).chunk(2, -1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: Tensor, mem: tuple[Tensor, Tensor], key_mask: Tensor) -> Tensor:
        q = split_heads(self.q(x), self.heads)
        y = F.scaled_dot_product_attention(q, mem[0], mem[1], attn_mask=key_mask)
        return self.out(merge_heads(y))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.self_attn = SelfAttention(d, heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.cross_attn = CrossAttention(d, heads)
        self.norm3 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm3(x))))))

    def forward(self, x: Tensor, mem: tuple[Tensor, Tensor], key_mask: Tensor) -> Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x)))
        x = x + self.drop(self.cross_attn(self.norm2(x), mem, key_mask))
        return x + self.feed_forward(x)

    def step(
        self, x: Tensor, cache: list[Tensor] | None, mem: tuple[Tensor, Tensor], key_mask: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        y, cache = self.self_attn.step(self.norm1(x), cache)
        x = x + y
        x = x + self.cross_attn(self.norm2(x), mem, key_mask)
        return x + self.feed_forward(x), cache


class ContextLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = SelfAttention(d, heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn.forward_masked(self.norm1(x), key_mask))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))


class FrameContext(nn.Module):
    """Self-attention over the frames before the CTC head (model/src/net/context.rs)."""

    def __init__(self, d: int, heads: int, layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ContextLayer(d, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.proj = nn.Linear(d, d)

    def forward(self, frames: Tensor, valid: Tensor) -> Tensor:
        b, w, d = frames.shape
        x = frames + sinusoid(0, w, d).to(frames.device, frames.dtype).unsqueeze(0)
        key_mask = (torch.arange(w, device=frames.device).view(1, w) < valid.view(b, 1)).view(b, 1, 1, w)
        for layer in self.layers:
            x = layer(x, key_mask)
        return frames + self.proj(self.norm(x))


class Decoder(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(vocab, d))
        self.layers = nn.ModuleList(DecoderLayer(d, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.out = nn.Linear(d, vocab)
        self.drop = nn.Dropout(dropout)
        self.d_model = d

    def embed_tokens(self, tokens: Tensor, start: int) -> Tensor:
        emb = F.embedding(tokens, self.embed) * math.sqrt(self.d_model)
        pos = sinusoid(start, tokens.shape[1], self.d_model).to(emb.device, emb.dtype)
        return emb + pos.unsqueeze(0)

    def forward(self, tokens: Tensor, memory: Tensor, key_mask: Tensor) -> Tensor:
        x = self.drop(self.embed_tokens(tokens, 0))
        for layer in self.layers:
            x = layer(x, layer.cross_attn.memory_kv(memory), key_mask)
        return self.out(self.norm(x))


class Recognizer(nn.Module):
    """The whole network; ``state_dict()`` names equal textrec's safetensors names."""

    def __init__(self, arch: Architecture, vocab_size: int) -> None:
        super().__init__()
        self.arch = arch
        self.vocab_size = vocab_size
        d = arch.d_model
        self.encoder = Encoder(arch.encoder_channels, arch.encoder_blocks, d)
        self.memory_norm = nn.LayerNorm(d, eps=1e-5)
        self.ctc_context = (
            FrameContext(d, arch.heads, arch.ctc_context_layers, arch.ff_dim, arch.dropout)
            if arch.ctc_weight > 0 and arch.ctc_context_layers > 0
            else None
        )
        self.ctc_head = nn.Linear(d, vocab_size) if arch.ctc_weight > 0 else None
        self.decoder = Decoder(vocab_size, d, arch.heads, arch.decoder_layers, arch.ff_dim, arch.dropout)

    def encode(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Memory ``[B, S, d]``, key mask ``[B, 1, 1, S]`` (bool), features ``[B, d, H', W']``
        and valid feature columns ``[B]``."""
        features, valid = self.encoder(images, widths)
        b, d, h, w = features.shape
        pe = grid(h, w, d).to(features.device, features.dtype)
        memory = self.memory_norm((features + pe.unsqueeze(0)).flatten(2, 3).transpose(1, 2))
        cols = torch.arange(w, device=images.device)
        key_mask = (cols.view(1, 1, w) < valid.view(b, 1, 1)).expand(b, h, w).reshape(b, 1, 1, h * w)
        return memory, key_mask, features, valid

    def ctc_log_probs(self, features: Tensor, valid: Tensor) -> Tensor:
        """``[W', B, V]`` CTC log-probabilities (requires a CTC head)."""
        assert self.ctc_head is not None
        frames = features.mean(2).transpose(1, 2)
        if self.ctc_context is not None:
            frames = self.ctc_context(frames, valid)
        return self.ctc_head(frames).transpose(0, 1).log_softmax(-1)

    def forward(self, images: Tensor, widths: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Teacher-forced logits ``[B, T, V]``, CTC log-probs (or None) and CTC frame counts."""
        memory, key_mask, features, valid = self.encode(images, widths)
        logits = self.decoder(tgt_in, memory, key_mask)
        ctc = self.ctc_log_probs(features, valid) if self.ctc_head is not None else None
        return logits, ctc, valid

    def loss(
        self,
        logits: Tensor,
        ctc: Tensor | None,
        ctc_lengths: Tensor,
        tgt_out: Tensor,
        target_lengths: Tensor,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """``(1 - w)·CE + w·CTC`` exactly as ``Recognizer::loss``."""
        ce = F.cross_entropy(
            logits.float().reshape(-1, self.vocab_size),
            tgt_out.reshape(-1),
            ignore_index=PAD,
            label_smoothing=label_smoothing,
        )
        w = self.arch.ctc_weight
        if ctc is None or w <= 0:
            return ce
        ctc_loss = F.ctc_loss(ctc, tgt_out, ctc_lengths, target_lengths, blank=PAD, zero_infinity=True)
        return ce * (1.0 - w) + ctc_loss * w

    @torch.no_grad()
    def greedy_decode(
        self, images: Tensor, widths: Tensor, max_len: int, run_all_steps: bool = False
    ) -> tuple[list[list[int]], list[float | None], Tensor, Tensor]:
        """Greedy decoding with a key/value cache, as ``Recognizer::greedy_decode``.

        Returns each item's character ids, its EOS probability (None when it ran into
        ``max_len``), the tokens fed at each step ``[B, steps]`` and the logits of each step
        ``[B, steps, V]``. ``run_all_steps`` runs all ``max_len + 1`` steps, like
        ``greedy_decode_traced``.
        """
        memory, key_mask, _, _ = self.encode(images, widths)
        mems = [layer.cross_attn.memory_kv(memory) for layer in self.decoder.layers]
        caches: list[list[Tensor] | None] = [None] * len(mems)
        b = images.shape[0]
        never = torch.tensor([PAD, BOS], device=images.device)
        tokens: list[list[int]] = [[] for _ in range(b)]
        eos_probs: list[float | None] = [None] * b
        done = [False] * b
        nxt = [BOS] * b
        fed, logged = [], []
        for step in range(max(max_len, 0) + 1):
            inp = torch.tensor(nxt, device=images.device).view(b, 1)
            x = self.decoder.embed_tokens(inp, step)
            for i, layer in enumerate(self.decoder.layers):
                x, caches[i] = layer.step(x, caches[i], mems[i], key_mask)
            logits = self.decoder.out(self.decoder.norm(x)).squeeze(1)
            probs = logits.float().index_fill(1, never, float("-inf")).softmax(-1)
            best_p, best = probs.max(-1)
            fed.append(inp)
            logged.append(logits)
            for i, (tok, p) in enumerate(zip(best.tolist(), best_p.tolist())):
                if done[i]:
                    continue
                if tok == EOS:
                    eos_probs[i] = p
                    done[i] = True
                elif step < max_len:
                    tokens[i].append(tok)
                    nxt[i] = tok
                else:
                    done[i] = True
                if done[i]:
                    nxt[i] = EOS
            if not run_all_steps and all(done):
                break
        return tokens, eos_probs, torch.cat(fed, 1), torch.stack(logged, 1)


@dataclass
class ModelFolder:
    """A loaded textrec model folder."""

    net: Recognizer
    tokenizer: Tokenizer
    manifest: dict


def load_model_dir(path: str | Path, device: str = "cpu") -> ModelFolder:
    """Build the network from ``manifest.json`` and load ``model.safetensors`` by name (strict:
    every textrec tensor must have a counterpart of the same shape and vice versa)."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != "textrec.model/v1":
        raise ValueError(f"{path}: not a textrec.model/v1 folder")
    arch = Architecture(**manifest["architecture"])
    tokenizer = Tokenizer(manifest["charset"])
    net = Recognizer(arch, tokenizer.vocab_size)
    weights = load_file(str(path / "model.safetensors"))
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}, shape mismatch {wrong}")
    net.load_state_dict(weights, strict=False)
    return ModelFolder(net=net.to(device).eval(), tokenizer=tokenizer, manifest=manifest)
