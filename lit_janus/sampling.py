"""Drawing tokens: classifier-free guidance, top-k / top-p filtering, and Gumbel-max sampling with
counter-based noise.

The noise for image (or answer) i at step s is a hash of (seed_i, s, code), so a draw depends on its
own seed only, never on batch size, batch composition, padding or which loop produced it, and the
fast decoder (`lit_janus.decoder`) can draw inside a CUDA graph. Small pure functions, in the manner
of LlamaGen's `cfg_logits` / `sample`.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# counter-based noise
# ---------------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF
# A 32-bit integer hash (the "lowbias32" family). Both multipliers are below 2**31, so every
# product of a 32-bit value stays below 2**63: exact int64 arithmetic on any device.
_C1, _C2 = 0x21F0AAAD, 0x735A2D97


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def seed_key(seed: int, index: int = 0) -> int:
    """The 32-bit noise key of the `index`-th image (or answer) drawn with `seed` (any Python int)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    return _mix32_int(_mix32_int(_mix32_int(s & _M32) ^ (s >> 32)) ^ _mix32_int(index + 0x9E3779B9))


def uniform_noise(keys: torch.Tensor, step: torch.Tensor | int, n: int) -> torch.Tensor:
    """U(0, 1) noise of shape [len(keys), n], a pure function of (key, step, column).

    23 random bits give values (k + 0.5) / 2**23, all exactly representable in float32, so the
    Gumbel transform below never sees 0 or 1."""
    step = torch.as_tensor(step, device=keys.device, dtype=torch.long)
    row = _mix32(keys.long() ^ _mix32(step & _M32))
    col = _mix32(torch.arange(n, device=keys.device, dtype=torch.long))
    bits = _mix32(row[:, None] ^ col) >> 9
    return (bits.float() + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(keys: torch.Tensor, step: torch.Tensor | int, n: int) -> torch.Tensor:
    return -torch.log(-torch.log(uniform_noise(keys, step, n)))


# ---------------------------------------------------------------------------------------------
# logits -> token
# ---------------------------------------------------------------------------------------------
def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance as in DeepSeek's script: uncond + w * (cond - uncond)."""
    return uncond + weight * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and/or the top-p nucleus to -inf (at least one token is kept).
    Fixed shapes only (no boolean indexing), so it runs inside a CUDA graph."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (never the first:
        # rounding can make the mass "above" it a hair over 0)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    keys: torch.Tensor | None = None, step: torch.Tensor | int = 0,
) -> torch.Tensor:
    """One token per row of `logits` [B, V]: argmax if temperature == 0, else an exact draw from
    softmax(filter(logits / temperature)) by Gumbel-max with the counter-based noise of (keys, step).
    Without `keys` the noise comes from torch's global RNG (not reproducible across batchings)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    # times the reciprocal, not divided: inductor rewrites x / c that way, so the compiled decode steps
    # and the eager first step round alike
    logits = filter_logits(logits * (1.0 / temperature), top_k, top_p)
    if keys is None:
        noise = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-10, 1 - 1e-7)))
    else:
        noise = gumbel_noise(keys, step, logits.shape[-1])
    return (logits + noise).argmax(-1)


__all__ = ["cfg_logits", "filter_logits", "gumbel_noise", "sample", "seed_key", "uniform_noise"]
