"""Sampling from Janus-Pro: text-to-image with classifier-free guidance, and answers about images.

Three text-to-image loops, one distribution:

- `generate_official`: the algorithm of DeepSeek's `generation_inference.py` (interleaved cond/uncond
  rows, the unconditional prompt padded between its first token and `<begin_of_image>`, no attention
  mask, eager forward with a growing cache, `torch.multinomial`). The benchmark baseline, nothing else.
- `generate_reference`: one prompt at a time, eager transformers forward with a growing
  `DynamicCache`, our sampler. Short enough to read as the specification of the fast loop.
- `generate` / `StaticDecoder`: many prompts in one batch (left padding, attention mask, per-row
  rotary positions), a preallocated KV cache, and a lean per-layer forward over the same weights;
  on a GPU the 576 decode steps are CUDA graphs (one per attention-length bucket) around
  `torch.compile`d layer halves.

Sampling is Gumbel-max with counter-based noise: the noise for image i at step s is a hash of
(seed_i, s, code), so an image depends on its own seed only, never on batch size, batch
composition, padding or which loop produced it, and the fast loop can draw inside a CUDA graph.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------------------------------------
# the lean Llama forward over transformers' weights, with a static KV cache
# ---------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, operation for operation (so both paths agree bit for bit)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attn_in(x, norm_w, w_qkv, b_qkv, cos, sin, eps: float, n_head: int, n_kv: int):
    """First half of a decoder layer: RMSNorm, the q/k/v projections as one matmul (concatenated
    weights, `layer_weights`), rotary. x [R, T, D] -> q [R, H, T, hd], k, v [R, H_kv, T, hd]. Tensors in,
    tensors out: one compiled graph serves every layer and every attention length."""
    R, T, _ = x.shape
    h = rms_norm(x, norm_w, eps)
    qkv = F.linear(h, w_qkv, b_qkv).view(R, T, n_head + 2 * n_kv, -1).transpose(1, 2)
    q, k, v = qkv.split([n_head, n_kv, n_kv], dim=1)
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q, k, v


def attn_out_mlp(x, a, wo, bo, norm_w, w_gate_up, b_gate_up, wd, bd, eps: float):
    """Second half: output projection + residual, RMSNorm, SwiGLU MLP (gate and up as one matmul)
    + residual. a [R, H, T, hd]."""
    R, _, T, _ = a.shape
    x = x + F.linear(a.transpose(1, 2).reshape(R, T, -1), wo, bo)
    h = rms_norm(x, norm_w, eps)
    gate, up = F.linear(h, w_gate_up, b_gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, wd, bd)


@dataclass
class KVCache:
    """K and V for every layer, preallocated: [n_layer, rows, n_kv, capacity, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, llm_config, rows: int, capacity: int, dtype: torch.dtype, device) -> "KVCache":
        hd = getattr(llm_config, "head_dim", None) or llm_config.hidden_size // llm_config.num_attention_heads
        shape = (llm_config.num_hidden_layers, rows, llm_config.num_key_value_heads, capacity, hd)
        # zeros, not empty: unwritten slots are masked, but masked NaN garbage would still poison SDPA
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


@dataclass
class Kernels:
    """The functions the lean forward and the samplers call: eager, or compiled for decode shapes."""

    attn_in: Callable = attn_in
    attn_out_mlp: Callable = attn_out_mlp
    sample: Callable = sample


EAGER = Kernels()


def layer_weights(layer, out: tuple | None = None, dtype: torch.dtype | None = None) -> tuple:
    """One decoder layer's weights as the lean forward takes them: (ln1, w_qkv, b_qkv, wo, bo, ln2,
    w_gate_up, b_gate_up, wd, bd), q/k/v and gate/up concatenated so that each triple or pair is one
    matmul (at decode sizes a matmul costs its weight read plus a fixed overhead: fewer, larger ones
    are faster). The concatenations are copies, in `dtype` if given (autocast's: what it would cast
    them to anyway); `out` (an earlier result) refreshes them in place, keeping their addresses for
    CUDA graphs."""
    a, m = layer.self_attn, layer.mlp

    def cat(parts, i):
        if parts[0] is None:
            return None
        parts = [p.to(dtype) for p in parts] if dtype is not None else parts
        if out is None:
            return torch.cat(parts)
        return torch.cat(parts, out=out[i])

    return (layer.input_layernorm.weight, cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 1),
            cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], 2), a.o_proj.weight, a.o_proj.bias,
            layer.post_attention_layernorm.weight, cat([m.gate_proj.weight, m.up_proj.weight], 6),
            cat([m.gate_proj.bias, m.up_proj.bias], 7), m.down_proj.weight, m.down_proj.bias)


def forward_cached(model, x: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                   cache: KVCache, length: int, kernels: Kernels = EAGER, weights: list[tuple] | None = None,
                   ) -> torch.Tensor:
    """The LLM over embeddings x [R, T, D] at rotary positions pos [R, T]; writes K/V into cache
    `slots` [T] and attends to cache[:length] where mask [R, 1, T, length] allows (True, or an
    additive 0 rather than -inf). `weights`: `layer_weights` of every layer (made here if None).
    Returns the final-norm hidden states [R, T, D]."""
    llm = model.llm
    cfg = llm.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    eps = cfg.rms_norm_eps
    layers = llm.layers[: cfg.num_hidden_layers]
    weights = weights or [layer_weights(layer) for layer in layers]
    cos, sin = llm.rotary_emb(x, pos)
    for i, (layer, w) in enumerate(zip(layers, weights)):
        (ln1, w_qkv, b_qkv, wo, bo, ln2, w_gu, b_gu, wd, bd) = w
        q, k, v = kernels.attn_in(x, ln1, w_qkv, b_qkv, cos, sin, eps, n_head, n_kv)
        cache.k[i].index_copy_(2, slots, k.to(cache.k.dtype))
        cache.v[i].index_copy_(2, slots, v.to(cache.v.dtype))
        kw = {"enable_gqa": True} if n_kv != n_head else {}
        a = F.scaled_dot_product_attention(
            q, cache.k[i, :, :, :length], cache.v[i, :, :, :length], attn_mask=mask,
            scale=layer.self_attn.scaling, **kw,
        )
        x = kernels.attn_out_mlp(x, a, wo, bo, ln2, w_gu, b_gu, wd, bd, eps)
    return llm.norm(x)


def prefill(model, embeds: torch.Tensor, pad: torch.Tensor, cache: KVCache, kernels: Kernels = EAGER,
            weights: list[tuple] | None = None) -> torch.Tensor:
    """Run left-padded prompts embeds [R, P, D] (row r has pad[r] padding positions first) into
    cache slots [0, P). Returns the hidden state of the last position [R, D]."""
    R, P, _ = embeds.shape
    ar = torch.arange(P, device=embeds.device)
    pos = (ar[None, :] - pad[:, None]).clamp(min=0)
    causal = ar[None, :] <= ar[:, None]  # [q, k]
    mask = causal[None] & (ar[None, None, :] >= pad[:, None, None])
    # a padding query sees only itself: no fully-masked row, hence no NaN in the cache
    mask = mask | torch.eye(P, dtype=torch.bool, device=embeds.device)[None]
    return forward_cached(model, embeds, pos, ar, mask[:, None], cache, P, kernels, weights)[:, -1]


def decode_one_token(model, x: torch.Tensor, slot: torch.Tensor, pad: torch.Tensor, cache: KVCache,
                     length: int, kernels: Kernels = EAGER, weights: list[tuple] | None = None) -> torch.Tensor:
    """One position per row: x [R, D] sits in cache `slot` (a 0-dim device tensor, so a CUDA graph
    can replay this for any step), at rotary position slot - pad[r]. Returns hidden [R, D]."""
    ar = torch.arange(length, device=x.device)
    visible = (ar[None, :] >= pad[:, None]) & (ar[None, :] <= slot)
    # additive, built once per step: a boolean mask is converted inside SDPA, once per layer
    mask = torch.zeros(visible.shape, dtype=cache.k.dtype, device=x.device).masked_fill_(~visible, float("-inf"))
    pos = (slot - pad)[:, None]
    return forward_cached(model, x[:, None], pos, slot.view(1), mask[:, None, None], cache, length, kernels,
                          weights)[:, 0]


# ---------------------------------------------------------------------------------------------
# the fast decoder: static state, buckets, CUDA graphs
# ---------------------------------------------------------------------------------------------
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _cache_kwarg(llm) -> str:
    # transformers renamed past_key_values -> cache (5.2x); support both spellings
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


@dataclass
class _State:
    """Device tensors a CUDA graph reads and writes in place (never rebound while graphs exist)."""

    mode: str
    cache: KVCache
    pad: torch.Tensor  # [rows] left-padding length of each row
    slot: torch.Tensor  # [] cache slot of the token being fed
    step: torch.Tensor  # [] index of the token being produced
    tokens: torch.Tensor  # [n_seq] last sampled token of each sequence
    keys: torch.Tensor  # [n_seq] noise keys
    done: torch.Tensor  # [n_seq] (text) eos already produced
    out: torch.Tensor  # [n_seq, n_out] produced tokens

    @property
    def n_seq(self) -> int:
        return self.tokens.shape[0]


class StaticDecoder:
    """Fast batched sampling for one `JanusPro`: a preallocated KV cache, a lean forward over the
    model's own weights, and on CUDA one graph per attention-length bucket.

    Keep one instance per model and reuse it: its cache and graphs survive between calls (a call
    needing fewer rows than allocated fills the rest with copies of row 0 and drops them).
    Graphs hold the addresses of the weights, so they are rebuilt when the parameters are replaced.

    Args:
        model: a `JanusPro` (any dtype / device). Under an active autocast it decodes eagerly.
        cuda_graphs: replay decode steps as CUDA graphs (default: on for CUDA models).
        compile: `torch.compile` the two halves of a decoder layer and the sampler (default: on for
            CUDA models when Triton is importable). Falls back to eager if compilation fails.
        bucket: attention-length granularity; a step attends to the cache rounded up to this many
            slots, so reading the cache costs what the sequence needs (one graph per bucket).

    The decoder keeps its own copy of the q/k/v and gate/up weights, concatenated (`layer_weights`:
    three matmuls per layer fewer), in the decoding dtype, refreshed from the model at the start of
    every call, so training in between is seen. It costs memory: 0.9 G parameters at 1B, 4.2 G at 7B
    (in bf16, 1.7 GB and 8.4 GB).
    """

    def __init__(self, model, cuda_graphs: bool | None = None, compile: bool | None = None, bucket: int = 64):
        self.model = model
        dev = self.device
        on_cuda = dev.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else (cuda_graphs and on_cuda)
        if compile is None:
            compile = on_cuda and _has_triton()
        self.bucket = bucket
        self.kernels = _compiled_kernels() if compile else EAGER
        self.state: _State | None = None
        self._weights: list[tuple] | None = None
        self._graphs: dict[tuple, Any] = {}
        self._pool = None
        self._stream = None
        self._weights_id: tuple | None = None

    @property
    def device(self) -> torch.device:
        return self.model.llm.embed_tokens.weight.device

    @property
    def compiled(self) -> bool:
        return self.kernels is not EAGER

    def _refresh_weights(self, dtype: torch.dtype) -> None:
        """Concatenated weights from the model's current values (same buffers if nothing moved)."""
        layers = self.model.llm.layers[: self.model.llm.config.num_hidden_layers]
        old = self._weights or [None] * len(layers)
        self._weights = [layer_weights(layer, w, dtype) for layer, w in zip(layers, old)]

    def _dtype(self) -> torch.dtype:
        dt = self.device.type
        if torch.is_autocast_enabled(dt):
            return torch.get_autocast_dtype(dt)
        return self.model.llm.layers[0].self_attn.k_proj.weight.dtype

    # ---- state ----------------------------------------------------------------------------
    def _prepare(self, mode: str, n_seq: int, rows_per_seq: int, capacity: int, n_out: int) -> int:
        """Make sure state fits; returns the number of sequences allocated (>= n_seq)."""
        dtype = self._dtype()
        wid = (self.model.llm.layers[0].self_attn.q_proj.weight.data_ptr(), self.model.lm_head.weight.data_ptr(),
               self.model.gen_head.vision_head.weight.data_ptr(), dtype)
        if wid != self._weights_id:
            self._graphs.clear()
            self._weights = None  # new parameters (or dtype): new concatenated copies
            self._weights_id = wid
        self._refresh_weights(dtype)
        s = self.state
        reuse = (
            s is not None and s.mode == mode and s.out.shape[1] == n_out and s.cache.capacity >= capacity
            and s.cache.k.dtype == self._dtype() and s.cache.k.device == self.device
            and (s.n_seq == n_seq or (self.cuda_graphs and s.n_seq > n_seq))
        )
        if reuse:
            return s.n_seq
        self._graphs.clear()
        self.state = None  # free the old cache first
        dev, rows = self.device, n_seq * rows_per_seq
        capacity = _round_up(capacity, self.bucket)
        z = lambda *shape, dtype=torch.long: torch.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
        self.state = _State(
            mode=mode, cache=KVCache.empty(self.model.llm.config, rows, capacity, self._dtype(), dev),
            pad=z(rows), slot=z(), step=z(), tokens=z(n_seq), keys=z(n_seq), done=z(n_seq, dtype=torch.bool),
            out=z(n_seq, n_out),
        )
        return n_seq

    def _length(self, n_valid: int) -> int:
        return min(_round_up(n_valid, self.bucket), self.state.cache.capacity)

    # ---- one step of each kind (what a CUDA graph records) ------------------------------------
    def _image_step(self, length: int, cfg_weight: float, temperature: float, top_k, top_p) -> None:
        s, m = self.state, self.model
        x = m.code_embeddings(s.tokens)
        x = torch.cat([x, x])  # the same code enters the conditional and the unconditional row
        h = decode_one_token(m, x, s.slot, s.pad, s.cache, length, self.kernels, self._weights)
        logits = m.gen_head(h).float()
        n = s.n_seq
        logits = cfg_logits(logits[:n], logits[n:], cfg_weight)
        nxt = self.kernels.sample(logits, temperature, top_k, top_p, s.keys, s.step)
        self._emit(nxt)

    def _text_step(self, length: int, temperature: float, top_k, top_p, eos_id: int | None) -> None:
        s, m = self.state, self.model
        x = m.llm.embed_tokens(s.tokens)
        h = decode_one_token(m, x, s.slot, s.pad, s.cache, length, self.kernels, self._weights)
        nxt = self.kernels.sample(m.lm_head(h).float(), temperature, top_k, top_p, s.keys, s.step)
        if eos_id is not None:  # finished rows keep emitting eos
            nxt = torch.where(s.done, torch.full_like(nxt, eos_id), nxt)
            s.done.logical_or_(nxt == eos_id)
        self._emit(nxt)

    def _emit(self, nxt: torch.Tensor) -> None:
        s = self.state
        s.tokens.copy_(nxt)
        s.out.index_copy_(1, s.step.view(1), nxt[:, None])
        s.slot.add_(1)
        s.step.add_(1)

    # ---- graphs -----------------------------------------------------------------------------
    def _use_graphs(self) -> bool:
        # autocast caches weight casts outside the graph's memory pool: never capture under it
        return self.cuda_graphs and not torch.is_autocast_enabled(self.device.type)

    def _run(self, key: tuple, fn: Callable[[], None]) -> None:
        """Run one step: replay its graph (captured by `_ensure_graphs`) or call it eagerly."""
        if not self._use_graphs():
            fn()
            return
        g = self._graphs.get(key)
        if g is None:
            raise RuntimeError(f"no CUDA graph for {key}; _capture must run before prefill")
        g.replay()

    def _capture(self, key: tuple, fn: Callable[[], None], length: int) -> None:
        """Warm up (compiles, cuBLAS workspaces) on a side stream, then record `fn`. Called before the
        prefill of a call, so the garbage the warm-up writes into the state is overwritten."""
        s = self.state
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
            self._pool = torch.cuda.graph_pool_handle()
        stream = self._stream

        def reset():  # in-range counters and ids for the warm-up steps
            s.slot.fill_(length - 1)
            s.step.zero_()
            s.tokens.zero_()
            s.pad.zero_()
            s.done.zero_()

        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                reset()
                fn()
            reset()
        stream.synchronize()
        g = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader's pin-memory thread may touch CUDA while we capture
        with torch.cuda.graph(g, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graphs[key] = g

    def _ensure_graphs(self, keys_fns: list[tuple[tuple, Callable[[], None], int]]) -> None:
        if not self._use_graphs():
            return
        missing = [(k, f, n) for k, f, n in keys_fns if k not in self._graphs]
        if not missing:
            return
        try:
            for k, f, n in missing:
                self._capture(k, f, n)
        except Exception as e:  # noqa: BLE001 - any failure: fall back, keep results correct
            torch.cuda.synchronize(self.device)
            self._graphs.clear()
            if self.compiled:
                warnings.warn(f"compiled CUDA-graph decoding failed ({type(e).__name__}: {e}); retrying without "
                              "torch.compile", stacklevel=3)
                self.kernels = EAGER
                self._ensure_graphs(keys_fns)
            else:
                warnings.warn(f"CUDA-graph capture failed ({type(e).__name__}: {e}); decoding eagerly", stacklevel=3)
                self.cuda_graphs = False

    # ---- text-to-image ----------------------------------------------------------------------
    @torch.no_grad()
    def images(self, cond_ids: Sequence[Sequence[int]], uncond_ids: Sequence[Sequence[int]], keys: Sequence[int],
               *, cfg_weight: float = 5.0, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, n_tokens: int | None = None, pad_id: int = 0) -> torch.Tensor:
        """VQ codes [N, n_tokens] for N images; image i is prompted by `cond_ids[i]` (ending in
        `<begin_of_image>`), guided against `uncond_ids[i]`, with noise key `keys[i]`."""
        N = len(cond_ids)
        if not (N == len(uncond_ids) == len(keys)) or N == 0:
            raise ValueError("need one cond prompt, one uncond prompt and one key per image (and at least one image)")
        n_tokens = n_tokens or self.model.config.num_image_tokens
        rows = [list(r) for r in cond_ids] + [list(r) for r in uncond_ids]
        P = max(len(r) for r in rows)
        n_seq = self._prepare("image", N, 2, P + n_tokens, n_tokens)
        # dummy sequences (reusing graphs made for a larger batch) repeat image 0
        rows = rows[:N] + [rows[0]] * (n_seq - N) + rows[N:] + [rows[N]] * (n_seq - N)
        key_list = list(keys) + [keys[0]] * (n_seq - N)
        sampling = (float(cfg_weight), float(temperature), top_k, top_p)
        steps = [
            (("image", self._length(P + j), *sampling), self._length(P + j)) for j in range(1, n_tokens)
        ]
        self._ensure_graphs([(key, (lambda L=L: self._image_step(L, *sampling)), L) for key, L in _unique(steps)])

        s, m = self.state, self.model
        ids, pad = _left_pad(rows, pad_id, self.device)
        s.pad.copy_(pad)
        s.keys.copy_(torch.tensor(key_list, dtype=torch.long))
        h = prefill(m, m.llm.embed_tokens(ids), s.pad, s.cache, EAGER, self._weights)
        logits = m.gen_head(h).float()
        logits = cfg_logits(logits[:n_seq], logits[n_seq:], cfg_weight)
        s.step.zero_()
        first = sample(logits, temperature, top_k, top_p, s.keys, s.step)
        s.slot.fill_(P - 1)  # _emit advances it: token 0 is fed at slot P
        self._emit(first)
        for key, L in steps:
            self._run(key, lambda L=L: self._image_step(L, *sampling))
        return s.out[:N].clone()

    # ---- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def text(self, embeds: Sequence[torch.Tensor], keys: Sequence[int], *, max_new_tokens: int,
             eos_id: int | None, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             check_every: int = 8) -> list[list[int]]:
        """Continue each prompt (embeddings [P_i, D], e.g. with image features already in place) by up
        to `max_new_tokens` tokens; a sequence stops after `eos_id` (which is not returned)."""
        B = len(embeds)
        if B == 0 or B != len(keys):
            raise ValueError("need one key per prompt (and at least one prompt)")
        P = max(e.shape[0] for e in embeds)
        n_seq = self._prepare("text", B, 1, P + max_new_tokens, max_new_tokens)
        embeds = list(embeds) + [embeds[0]] * (n_seq - B)
        key_list = list(keys) + [keys[0]] * (n_seq - B)
        sampling = (float(temperature), top_k, top_p, eos_id)
        steps = [(("text", self._length(P + j), *sampling), self._length(P + j)) for j in range(1, max_new_tokens)]
        self._ensure_graphs([(key, (lambda L=L: self._text_step(L, *sampling)), L) for key, L in _unique(steps)])

        s, m = self.state, self.model
        x = torch.zeros(n_seq, P, embeds[0].shape[-1], dtype=embeds[0].dtype, device=self.device)
        pad = torch.tensor([P - e.shape[0] for e in embeds], dtype=torch.long)
        for r, e in enumerate(embeds):
            x[r, P - e.shape[0]:] = e
        s.pad.copy_(pad)
        s.keys.copy_(torch.tensor(key_list, dtype=torch.long))
        s.done.zero_()
        h = prefill(m, x, s.pad, s.cache, EAGER, self._weights)
        s.step.zero_()
        first = sample(m.lm_head(h).float(), temperature, top_k, top_p, s.keys, s.step)
        if eos_id is not None:
            s.done.copy_(first == eos_id)
        s.slot.fill_(P - 1)
        self._emit(first)
        produced = 1
        for i, (key, L) in enumerate(steps):
            if eos_id is not None and i % check_every == 0 and bool(s.done[:B].all()):
                break  # one host sync every `check_every` steps
            self._run(key, lambda L=L: self._text_step(L, *sampling))
            produced += 1
        out = s.out[:B, :produced].tolist()
        if eos_id is None:
            return out
        return [row[: row.index(eos_id)] if eos_id in row else row for row in out]


def _unique(steps):
    seen = {}
    for key, L in steps:
        seen.setdefault(key, L)
    return list(seen.items())


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
    pad = torch.tensor([P - len(r) for r in rows], dtype=torch.long)
    return ids.to(device), pad.to(device)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _compiled_kernels() -> Kernels:
    c = lambda fn: torch.compile(fn, fullgraph=True, dynamic=False)  # noqa: E731
    return Kernels(attn_in=c(attn_in), attn_out_mlp=c(attn_out_mlp), sample=c(sample))


# ---------------------------------------------------------------------------------------------
# high level: prompts -> images, questions -> answers
# ---------------------------------------------------------------------------------------------
@dataclass
class Generation:
    """The images of one `generate` call, prompt-major: prompt 0's images first."""

    codes: torch.Tensor  # [N, num_image_tokens] VQ codes
    images: torch.Tensor | None  # [N, S, S, 3] uint8 on CPU (None when decode=False)
    prompt_index: list[int]  # which prompt each image belongs to
    image_index: list[int]  # its index among that prompt's images
    seeds: list[int]  # the seed of its prompt


def image_requests(processor, prompts: Sequence[str], images_per_prompt: int | Sequence[int] = 1,
                   seeds: int | Sequence[int] = 0):
    """Token ids, noise keys and bookkeeping for each image of each prompt. Raises (ValueError,
    PromptTooLongError) on an empty or over-long prompt."""
    n = [images_per_prompt] * len(prompts) if isinstance(images_per_prompt, int) else list(images_per_prompt)
    sd = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
    if not (len(n) == len(sd) == len(prompts)):
        raise ValueError("images_per_prompt and seeds must give one value per prompt")
    if not prompts or min(n) < 1:
        raise ValueError(f"need at least one prompt and images_per_prompt >= 1, got {len(prompts)} prompt(s) "
                         f"and images_per_prompt {images_per_prompt}")
    cond, uncond, keys, pidx, iidx, seed_of = [], [], [], [], [], []
    for p, (prompt, k, seed) in enumerate(zip(prompts, n, sd)):
        ids = processor.t2i_prompt_ids(prompt)
        for j in range(k):
            cond.append(ids)
            uncond.append(processor.unconditional_ids(ids))
            keys.append(seed_key(seed, j))
            pidx.append(p)
            iidx.append(j)
            seed_of.append(seed)
    return cond, uncond, keys, pidx, iidx, seed_of


@torch.no_grad()
def generate(model, processor, prompts: Sequence[str], *, images_per_prompt: int | Sequence[int] = 1,
             seeds: int | Sequence[int] = 0, cfg_weight: float = 5.0, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, decode: bool = True,
             decoder: StaticDecoder | None = None) -> Generation:
    """Text-to-image for a batch of prompts with the fast sampler.

    `seeds`: one per prompt, or an int s giving prompt i the seed s + i. Image j of a prompt with
    seed s is the same whatever else is in the batch. Pass a `StaticDecoder` to reuse its cache
    and CUDA graphs across calls."""
    cond, uncond, keys, pidx, iidx, seed_of = image_requests(processor, prompts, images_per_prompt, seeds)
    decoder = decoder or StaticDecoder(model)
    codes = decoder.images(cond, uncond, keys, cfg_weight=cfg_weight, temperature=temperature, top_k=top_k,
                           top_p=top_p, pad_id=processor.pad_id)
    images = decode_images(model, codes) if decode else None
    return Generation(codes=codes, images=images, prompt_index=pidx, image_index=iidx, seeds=seed_of)


@torch.no_grad()
def decode_images(model, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VQ codes [N, n] -> uint8 images [N, S, S, 3] on CPU, decoded `batch_size` at a time."""
    from lit_janus.vq import to_uint8

    return torch.cat([to_uint8(model.decode_codes(c)).cpu() for c in codes.split(batch_size)])


@torch.no_grad()
def generate_reference(model, cond_ids: Sequence[int], uncond_ids: Sequence[int], keys: Sequence[int], *,
                       cfg_weight: float = 5.0, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, n_tokens: int | None = None) -> torch.Tensor:
    """The straightforward loop for ONE prompt: its len(keys) images as cond rows then uncond rows,
    no padding, eager transformers forward with a growing DynamicCache, our sampler.
    Returns codes [len(keys), n_tokens]."""
    llm, dev = model.llm, model.llm.embed_tokens.weight.device
    n, n_tokens = len(keys), n_tokens or model.config.num_image_tokens
    ids = torch.tensor([list(cond_ids)] * n + [list(uncond_ids)] * n, device=dev)
    key_t = torch.tensor(list(keys), dtype=torch.long, device=dev)
    kw = _cache_kwarg(llm)
    out = llm(inputs_embeds=llm.embed_tokens(ids), use_cache=True, **{kw: None})
    cache, h = getattr(out, kw), out.last_hidden_state[:, -1]
    codes = torch.empty(n, n_tokens, dtype=torch.long, device=dev)
    for j in range(n_tokens):
        logits = model.gen_head(h).float()
        tok = sample(cfg_logits(logits[:n], logits[n:], cfg_weight), temperature, top_k, top_p, key_t, j)
        codes[:, j] = tok
        if j + 1 < n_tokens:
            x = model.code_embeddings(tok)
            out = llm(inputs_embeds=torch.cat([x, x])[:, None], use_cache=True, **{kw: cache})
            cache, h = getattr(out, kw), out.last_hidden_state[:, -1]
    return codes


@torch.no_grad()
def generate_official(model, prompt_ids: Sequence[int], pad_id: int, *, parallel_size: int = 16,
                      cfg_weight: float = 5.0, temperature: float = 1.0, n_tokens: int | None = None,
                      decode: bool = True):
    """DeepSeek's generation_inference.py algorithm, for benchmarking: `parallel_size` images of one
    prompt; rows interleaved (even = conditional, odd = the prompt with everything between its
    first and last token replaced by pad); no attention mask; the inner LLM with a growing cache;
    gen_head on the last position; softmax + torch.multinomial. Returns (codes, uint8 images|None)."""
    llm, dev = model.llm, model.llm.embed_tokens.weight.device
    n_tokens = n_tokens or model.config.num_image_tokens
    tokens = torch.tensor(list(prompt_ids), device=dev).repeat(parallel_size * 2, 1)
    tokens[1::2, 1:-1] = pad_id
    inputs_embeds = llm.embed_tokens(tokens)
    generated = torch.zeros((parallel_size, n_tokens), dtype=torch.int, device=dev)
    kw, cache = _cache_kwarg(llm), None
    for i in range(n_tokens):
        out = llm(inputs_embeds=inputs_embeds, use_cache=True, **{kw: cache})
        cache = getattr(out, kw)
        logits = model.gen_head(out.last_hidden_state[:, -1, :])
        logit_cond, logit_uncond = logits[0::2, :], logits[1::2, :]
        logits = logit_uncond + cfg_weight * (logit_cond - logit_uncond)
        probs = torch.softmax(logits / temperature, dim=-1)
        next_token = torch.multinomial(probs, num_samples=1)
        generated[:, i] = next_token.squeeze(-1)
        next_token = torch.cat([next_token, next_token], dim=1).view(-1)
        inputs_embeds = model.code_embeddings(next_token).unsqueeze(1)
    images = decode_images(model, generated.long()) if decode else None
    return generated, images


# ---- understanding ------------------------------------------------------------------------------
def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


@torch.no_grad()
def question_embeds(model, processor, images: Any, question: str) -> torch.Tensor:
    """Input embeddings [P, D] of one understanding prompt: `images` is an image (PIL or path), a
    list of them, or None. Raises ValueError / FileNotFoundError / PromptTooLongError for bad input."""
    from lit_janus.processor import PromptTooLongError

    ims = [] if images is None else _as_list(images)
    ids = processor.understanding_ids(question, len(ims))
    if len(ids) > processor.max_length:
        raise PromptTooLongError(f"question with {len(ims)} image(s) is {len(ids)} tokens; the context is "
                                 f"{processor.max_length}")
    dev = model.llm.embed_tokens.weight.device
    t = torch.tensor(ids, device=dev)[None]
    if not ims:
        return model.input_embeddings(t)[0]
    pixels = torch.stack([processor.understanding_pixels(x) for x in ims]).to(dev)
    return model.input_embeddings(t, image_mask=t == processor.image_id, pixel_values=pixels)[0]


@torch.no_grad()
def answer_ids(model, processor, images: Sequence[Any], questions: Sequence[str], *, max_new_tokens: int = 256,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               seeds: int | Sequence[int] = 0, stop_at_eos: bool = True,
               decoder: StaticDecoder | None = None) -> list[list[int]]:
    """Answer token ids (without the closing eos) for each (image(s), question) pair, batched with
    left padding. images[i]: an image (PIL or path), a list of them, or None for a text-only question.
    `seeds` (used when sampling): one per question, or an int s giving question i the seed s + i."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} image entries for {len(questions)} questions")
    sd = [seeds + i for i in range(len(questions))] if isinstance(seeds, int) else list(seeds)
    embeds = [question_embeds(model, processor, im, q) for im, q in zip(images, questions)]
    decoder = decoder or StaticDecoder(model)
    return decoder.text(embeds, [seed_key(s) for s in sd], max_new_tokens=max_new_tokens,
                        eos_id=processor.eos_id if stop_at_eos else None, temperature=temperature,
                        top_k=top_k, top_p=top_p)


def answer(model, processor, images: Sequence[Any], questions: Sequence[str], *, max_new_tokens: int = 256,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           seeds: int | Sequence[int] = 0, decoder: StaticDecoder | None = None) -> list[str]:
    """Answers to questions about images (greedy by default; temperature > 0 samples, reproducibly
    per question from `seeds`). Batched with a KV cache; each answer stops at eos."""
    ids = answer_ids(model, processor, images, questions, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, seeds=seeds, decoder=decoder)
    return [processor.decode(x).strip() for x in ids]


__all__ = [
    "Generation", "KVCache", "StaticDecoder", "answer", "answer_ids", "cfg_logits", "decode_images",
    "decode_one_token", "filter_logits", "generate", "generate_official", "generate_reference",
    "gumbel_noise", "image_requests", "prefill", "question_embeds", "sample", "seed_key", "uniform_noise",
]
