"""VQ tokenizer encode/decode on transformers' `JanusVQVAE` modules, with DeepSeek's lookup.

DeepSeek's quantizer L2-normalises both the encoder output and the codebook before the
nearest-neighbour search (cosine similarity). transformers' `JanusVQVAE.encode` inherits a plain
Euclidean search and can pick other codes, so training images must be tokenised here instead.
Decoding matches (transformers normalises the looked-up entries too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row after L2-normalising both sides. z: [N, d], codebook: [K, d].
    Always in float32, autocast or not: bf16 distances (~0.01 apart near 2) pick other codes for
    borderline patches, so bf16-mixed training would learn other targets than evaluation scores."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=-1)
        e = F.normalize(codebook.float(), dim=-1)
        # same expansion as DeepSeek's quantizer: |z|^2 + |e|^2 - 2 z.e
        d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.t()
    return d.argmin(dim=1)


def vq_encode(vq, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, S, S] in [-1, 1] -> codes [B, (S/16)^2] (raster order)."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels of shape [B, 3, H, W], got {tuple(pixels.shape)}")
    z = vq.quant_conv(vq.encoder(pixels.to(vq.quant_conv.weight.dtype)))  # [B, d, h, w]
    B, d, h, w = z.shape
    idx = l2_nearest_code(z.permute(0, 2, 3, 1).reshape(-1, d), vq.quantize.embedding.weight)
    return idx.view(B, h * w)


def vq_decode(vq, codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, grid*grid] -> pixels [B, 3, S, S] in (about) [-1, 1]."""
    if codes.ndim != 2:
        raise ValueError(f"expected codes of shape [B, N], got {tuple(codes.shape)}")
    K = vq.quantize.num_embeddings
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
        raise ValueError(f"codes must lie in [0, {K}), got [{int(codes.min())}, {int(codes.max())}]")
    return vq.decode(codes)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [B, 3, H, W] -> uint8 [B, H, W, 3], as DeepSeek's script: clip((x+1)/2*255)."""
    return ((pixels.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
