"""Attention backends for packed documents, registered with transformers' AttentionInterface.

A packed row holds several documents; position ids restart at 0 where a document starts
(lit_janus.batch.collate). transformers turns that into a mask, and what the mask costs depends on
the backend:

- `sdpa` gets a dense [B, 1, T, T] boolean mask, which rules out the flash kernel: the
  memory-efficient kernel then computes every (query, key) block of the row, masked or not.
- `flex_attention` gets a BlockMask and skips empty blocks (transformers' own integration; we only
  make it honour autocast, see `use_autocast_flex_attention`).
- `varlen_attention` (ours) gets no mask at all: `JanusPro.hidden_states` hands the LLM the
  documents' cumulative lengths once per forward, and each layer calls PyTorch's flash-attention
  varlen kernel (`torch.nn.attention.varlen`), which computes only the causal blocks inside each
  document. On a CPU (tests), or in float32, the same function runs a per-document sdpa loop instead.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

VARLEN = "varlen_attention"


def _autocast_dtype(query: torch.Tensor) -> torch.dtype | None:
    device = query.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


# ---------------------------------------------------------------------------------------------
# flex attention (transformers' integration, in autocast's dtype)
# ---------------------------------------------------------------------------------------------
def _flex_attention_in_autocast_dtype(module, query, key, value, *args, **kwargs):
    """transformers' flex attention with q, k, v cast to autocast's dtype. Under bf16-mixed the
    rotary embedding hands back float32 q and k (cos/sin take the float32 residual stream's dtype)
    beside a bf16 v; sdpa is on autocast's cast list and runs bf16 anyway, flex is not (in some torch
    versions): it would refuse the mix or run float32 kernels, reported ~12x slower in backward."""
    from transformers.integrations import flex_attention

    dtype = _autocast_dtype(query)
    if dtype is not None:
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    return flex_attention.flex_attention_forward(module, query, key, value, *args, **kwargs)


def use_autocast_flex_attention() -> None:
    """Make transformers' `flex_attention` implementation honour autocast (process-wide; a no-op
    outside autocast). Registered under the same name, so transformers' flex masks still apply."""
    from transformers import AttentionInterface

    AttentionInterface.register("flex_attention", _flex_attention_in_autocast_dtype)


# ---------------------------------------------------------------------------------------------
# varlen attention (flash kernel over documents, no mask)
# ---------------------------------------------------------------------------------------------
def document_offsets(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative document lengths over the flattened rows ([B, T] -> int32 [n_docs + 1]): a
    document starts wherever its position id is 0, and every row starts one. Padding continues
    the last document's positions (collate), so it joins that document, after its real tokens."""
    B, T = position_ids.shape
    start = position_ids == 0
    start[:, 0] = True
    idx = start.reshape(-1).nonzero().squeeze(1)
    return torch.cat([idx, idx.new_tensor([B * T])]).to(torch.int32)


@functools.cache
def _varlen_signature() -> tuple[dict, bool]:
    """(causal keyword, takes `scale`) of this torch's varlen_attn: 2.9-2.11 spell causal `is_causal`
    and have no `scale`; later versions use `window_size=(-1, 0)`. Read once, not per layer call."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    return ({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}), "scale" in params


@torch.compiler.disable  # one kernel either way; kept out of compiled decoder layers, whose graphs split here
def _flash_varlen(q, k, v, offsets, max_len: int, scale: float) -> torch.Tensor:
    """torch.nn.attention.varlen.varlen_attn, causal, in whichever spelling this torch has."""
    from torch.nn.attention.varlen import varlen_attn

    causal, takes_scale = _varlen_signature()
    kw = dict(causal)
    if takes_scale:
        kw["scale"] = scale
    elif abs(scale * q.shape[-1] ** 0.5 - 1.0) > 1e-6:  # the kernel's fixed 1/sqrt(head_dim)
        q = q * (scale * q.shape[-1] ** 0.5)
    return varlen_attn(q, k, v, offsets, offsets, max_len, max_len, **kw)


def _reference_varlen(q, k, v, offsets, scale: float) -> torch.Tensor:
    """The same attention, one sdpa call per document (CPU, tests): [N, H, hd] in and out."""
    out = torch.empty_like(q)
    bounds = offsets.tolist()
    for a, b in zip(bounds, bounds[1:]):
        qd, kd, vd = (t[a:b].transpose(0, 1) for t in (q, k, v))
        out[a:b] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale).transpose(0, 1)
    return out


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention-function signature: q [B, H, T, hd], k/v [B, H_kv, T, hd] ->
    ([B, T, H, hd], None). Documents come from `cu_seq_lens_q` (JanusPro.hidden_states); without
    it each row is one causal sequence. Any mask transformers built is ignored: there is none,
    since this name has no mask function (transformers then skips mask creation)."""
    if dropout:
        raise ValueError("varlen_attention has no dropout (Janus-Pro trains without attention dropout)")
    B, H, T, hd = query.shape
    scale = scaling if scaling is not None else hd ** -0.5
    if cu_seq_lens_q is None:
        cu_seq_lens_q = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=query.device)
        max_length_q = T
    dtype = _autocast_dtype(query) or query.dtype
    if key.shape[1] != H:  # grouped-query attention: one kv head per group of query heads
        key, value = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (key, value))
    q, k, v = (t.transpose(1, 2).reshape(B * T, H, hd).to(dtype) for t in (query, key, value))
    if q.is_cuda and dtype in (torch.float16, torch.bfloat16):
        out = _flash_varlen(q, k, v, cu_seq_lens_q, int(max_length_q or T), scale)
    else:
        out = _reference_varlen(q, k, v, cu_seq_lens_q, scale)
    return out.view(B, T, H, hd), None


def register_varlen_attention() -> None:
    """Make `attn_implementation="varlen_attention"` known to transformers (process-wide)."""
    from transformers import AttentionInterface

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"attn_implementation=varlen_attention needs torch >= 2.9 (torch.nn.attention.varlen); "
                          f"this is torch {torch.__version__}: use flex_attention or sdpa") from e

    AttentionInterface.register(VARLEN, varlen_attention_forward)
