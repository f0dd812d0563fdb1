"""Memory-lean cross-entropy through a linear head (the 102,400-token `lm_head`, the 16,384-code
`gen_head.vision_head`).

`linear_cross_entropy(hidden, weight, bias, target)` returns what
`F.cross_entropy(F.linear(hidden, weight, bias).float(), target, reduction="none")` and
`logits.argmax(-1) == target` return: per-token losses and argmax-correct flags, with the same
gradients w.r.t. `hidden`, `weight` and `bias`. It never holds the logits of all tokens: the forward
pass computes them `chunk_size` tokens at a time and keeps only the log-sum-exp (4 bytes per token);
the backward pass recomputes each chunk's logits and turns them into gradients at once. The head's
matmul is done twice (3 -> 4 matmuls of N x D x V), the price of never storing N x V.

Memory, per chunk of C tokens over V classes: C*V compute-dtype logits + two C*V fp32 buffers,
instead of the unchunked path's N*V fp32 log-probabilities saved for backward (plus the N*V fp32
and compute-dtype gradients materialised in backward). For 16k supervised text tokens that is
6.7 GB saved + 13 GB transient -> about 1.3 GB transient with the default chunk.

Precision follows autocast the way `head(h).float()` does: under `torch.autocast` the matmuls run in
the autocast dtype (bf16) and the softmax/log-sum-exp in fp32; without autocast in the tensors'
dtype. Weight and bias gradients of all chunks are accumulated in fp32 (the unchunked path rounds
the whole sum to bf16 once; this is at least as accurate). Extra memory for the weight gradient: at most
an fp32 accumulator plus one compute-dtype buffer of the head's size (none with a single chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Logit elements per chunk: 2**27 = 134M -> 1310 tokens of the 102,400 text vocabulary (0.5 GiB per
# fp32 C x V buffer), 8192 tokens of the 16,384 image codebook. Big enough for full-speed GEMMs.
DEFAULT_CHUNK_ELEMENTS = 2**27


def default_chunk_size(num_classes: int, chunk_elements: int | None = None) -> int:
    """Tokens per chunk so that one chunk holds `chunk_elements` logits (module default, read at call
    time so a run can change `lit_janus.losses.DEFAULT_CHUNK_ELEMENTS`)."""
    return max(1, (chunk_elements or DEFAULT_CHUNK_ELEMENTS) // max(1, num_classes))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and weight.is_floating_point():
        dt = torch.get_autocast_dtype(dev)
        # autocast only lowers fp32/fp16/bf16 inputs; fp64 stays as is (like F.linear under autocast)
        if hidden.dtype != torch.float64 and weight.dtype != torch.float64:
            return dt
    if hidden.dtype != weight.dtype:
        raise RuntimeError(
            f"linear_cross_entropy: hidden is {hidden.dtype} but the head weight is {weight.dtype} "
            "(outside autocast both must match, as for F.linear)"
        )
    return weight.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk_size, ignore_index):
        cdt = _compute_dtype(hidden, weight)
        acc = torch.promote_types(cdt, torch.float32)  # softmax dtype: fp32 (fp64 for fp64 inputs)
        N = hidden.shape[0]
        losses = torch.zeros(N, device=hidden.device, dtype=acc)
        correct = torch.zeros(N, device=hidden.device, dtype=torch.bool)
        lse = torch.zeros(N, device=hidden.device, dtype=acc)
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, chunk_size):
                e = min(N, s + chunk_size)
                t = target[s:e]
                valid = t != ignore_index
                logits = F.linear(hidden[s:e].to(cdt), w, b).to(acc)
                chunk_lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                lse[s:e] = chunk_lse
                losses[s:e] = torch.where(valid, chunk_lse - picked, 0.0)
                correct[s:e] = (logits.argmax(-1) == t) & valid
                del logits
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.cdt, ctx.chunk_size, ctx.ignore_index = cdt, chunk_size, ignore_index
        ctx.mark_non_differentiable(correct)
        return losses, correct

    @staticmethod
    def backward(ctx, grad_losses, _grad_correct):
        hidden, weight, bias, target, lse = ctx.saved_tensors
        cdt, chunk_size, ignore_index = ctx.cdt, ctx.chunk_size, ctx.ignore_index
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        N, acc = hidden.shape[0], lse.dtype
        single = N <= chunk_size
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc) if need_b else None
        # Weight gradient: one chunk -> one GEMM in the compute dtype, as the unchunked path. Several
        # chunks -> an fp32 accumulator plus ONE reused compute-dtype product buffer (no per-chunk
        # V x D temporaries): 6 bytes x V x D at most, what the unchunked path needs under autocast.
        grad_w = None if (single or not need_w) else torch.zeros(weight.shape, device=weight.device, dtype=acc)
        product = None if (single or not need_w or cdt == acc) else torch.empty(weight.shape, device=weight.device,
                                                                                   dtype=cdt)
        if grad_losses is None:
            grad_losses = torch.zeros(N, device=hidden.device, dtype=acc)
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, chunk_size):
                e = min(N, s + chunk_size)
                t = target[s:e]
                valid = t != ignore_index
                h = hidden[s:e].to(cdt)
                # d loss_i / d logits_i = softmax_i - onehot(t_i), scaled by the incoming gradient
                g = F.linear(h, w, b).to(acc)
                g.sub_(lse[s:e, None]).exp_()
                g.scatter_add_(1, t.clamp(min=0)[:, None], -valid.to(g.dtype)[:, None])  # no host sync
                g.mul_(torch.where(valid, grad_losses[s:e].to(acc), 0.0)[:, None])
                if need_b:
                    grad_b += g.sum(0)
                g = g.to(cdt)
                if need_h:
                    grad_h[s:e] = (g @ w).to(hidden.dtype)
                if need_w:
                    if single:
                        grad_w = g.t() @ h
                    elif product is None:  # compute dtype == accumulation dtype
                        grad_w.addmm_(g.t(), h)
                    else:
                        torch.mm(g.t(), h, out=product)
                        grad_w += product
                del g
        if need_w:
            if grad_w is None:  # N == 0
                grad_w = torch.zeros_like(weight)
            elif product is not None and product.dtype == weight.dtype:
                grad_w = product.copy_(grad_w)  # reuse the buffer for the result
            else:
                grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of `F.linear(hidden, weight, bias)` against `target`, chunked.

    Args:
        hidden: [N, D] hidden states (any float dtype; autocast decides the matmul dtype).
        weight: [V, D] head weight; bias: [V] or None.
        target: [N] class ids; `ignore_index` entries get loss 0, correct False and no gradient.
        chunk_size: tokens per chunk (default: as many as keep C x V at DEFAULT_CHUNK_ELEMENTS).
    Returns:
        (losses [N] fp32 (fp64 for fp64 inputs), correct [N] bool). `losses.sum() / (target != ignore_index).sum()` is
        `F.cross_entropy`'s mean; `correct` is not differentiable.
    """
    if hidden.dim() != 2 or target.dim() != 1 or hidden.shape[0] != target.shape[0]:
        raise ValueError(f"expected hidden [N, D] and target [N], got {tuple(hidden.shape)} and {tuple(target.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"head weight {tuple(weight.shape)} does not match hidden size {hidden.shape[1]}")
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, chunk, ignore_index)


def unchunked_linear_cross_entropy(hidden, weight, bias, target, chunk_size=None, ignore_index: int = IGNORE_INDEX):
    """The plain computation `linear_cross_entropy` replaces (all N x V fp32 logits at once): the reference
    for tests and the A/B baseline of benchmarks/train_step.py `--ce unchunked`."""
    logits = F.linear(hidden, weight, bias).float()
    losses = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index)
    return losses, (logits.argmax(-1) == target) & (target != ignore_index)


def head_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor,
                       chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_cross_entropy` with an `nn.Linear` head (its weight and bias)."""
    return linear_cross_entropy(hidden, head.weight, head.bias, target, chunk_size)


__all__ = ["linear_cross_entropy", "unchunked_linear_cross_entropy", "head_cross_entropy", "default_chunk_size",
           "DEFAULT_CHUNK_ELEMENTS"]
