"""The fast decoder: a preallocated KV cache, a lean Llama forward over transformers' weights, and on
a GPU one CUDA graph per attention-length bucket around `torch.compile`d layer halves.

`StaticDecoder` samples many prompts in one batch (left padding, attention mask, per-row rotary
positions) and draws from exactly the distribution of the straightforward loop
(`lit_janus.generate.generate_reference`): same weights, same sampler (`lit_janus.sampling`), same
counter-based noise. `prefill` and `decode_one_token` are the two forward shapes it records.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lit_janus.sampling import cfg_logits, sample

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


__all__ = ["EAGER", "KVCache", "Kernels", "StaticDecoder", "decode_one_token", "forward_cached", "layer_weights",
           "prefill"]
