"""The chunked linear cross-entropy equals F.cross_entropy(head(h).float(), y): values, argmax flags and
gradients w.r.t. hidden states, head weight and bias."""

import pytest
import torch
import torch.nn.functional as F

from lit_janus.losses import (
    default_chunk_size, head_cross_entropy, linear_cross_entropy, unchunked_linear_cross_entropy,
)


def _data(N=37, D=16, V=50, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(V, D, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    return h, w, b, y


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def _reference(h, w, b, y, reduction="none"):
    logits = F.linear(h, w, b).float()
    return F.cross_entropy(logits, y, reduction=reduction), logits.argmax(-1) == y


@pytest.mark.parametrize("chunk", [1, 5, 36, 37, 38, 1000])  # below, at and across chunk boundaries
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_cross_entropy_fp32(chunk, bias):
    h, w, b, y = _data(bias=bias)
    ref_loss, ref_ok = _reference(h, w, b, y)
    loss, ok = linear_cross_entropy(h, w, b, y, chunk_size=chunk)
    assert loss.dtype == torch.float32 and ok.dtype == torch.bool
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert torch.equal(ok, ref_ok)
    # a non-uniform upstream gradient (per-task means with different denominators, as in the model)
    weights = torch.linspace(0.1, 2.0, len(y))
    want = _grads((ref_loss * weights).sum(), (h, w, b))
    got = _grads((loss * weights).sum(), (h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_mean_matches_cross_entropy_mean_and_float64_is_exact():
    h, w, b, y = _data(N=64, D=24, V=300, dtype=torch.float64, seed=1)
    ref = F.cross_entropy(F.linear(h, w, b), y)
    loss, _ = linear_cross_entropy(h, w, b, y, chunk_size=7)
    assert loss.dtype == torch.float64  # fp64 inputs keep an fp64 softmax
    torch.testing.assert_close(loss.mean(), ref, rtol=1e-12, atol=1e-12)
    # in float64 the gradients agree to rounding
    want = _grads(ref, (h, w, b))
    got = _grads(loss.sum() / len(y), (h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_ignore_index_gives_zero_loss_and_no_gradient():
    h, w, b, y = _data(N=20)
    y = y.clone()
    y[::3] = -100
    ref = F.cross_entropy(F.linear(h, w, b), y)  # mean over the kept tokens
    loss, ok = linear_cross_entropy(h, w, b, y, chunk_size=6)
    kept = y != -100
    assert torch.all(loss[~kept] == 0) and not ok[~kept].any()
    torch.testing.assert_close(loss.sum() / kept.sum(), ref)
    want = _grads(ref, (h, w, b))
    got = _grads(loss.sum() / kept.sum(), (h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert torch.all(got[0][~kept] == 0)


def test_unchunked_reference_helper_agrees():
    h, w, b, y = _data(N=20)
    y = y.clone()
    y[3] = -100
    a, ok_a = linear_cross_entropy(h, w, b, y, chunk_size=6)
    e, ok_e = unchunked_linear_cross_entropy(h, w, b, y)
    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    assert torch.equal(ok_a, ok_e)


def test_empty_input():
    h, w, b, y = _data(N=0)
    loss, ok = linear_cross_entropy(h, w, b, y)
    assert loss.shape == (0,) and ok.shape == (0,)
    gh, gw, gb = _grads(loss.sum(), (h, w, b))
    assert gh.shape == (0, 16) and torch.all(gw == 0) and torch.all(gb == 0)


def test_frozen_head_gets_no_gradient_and_hidden_still_does():
    """Stage I: lm_head frozen, the hidden states still need their gradient (cheaper backward)."""
    h, w, b, y = _data()
    w.requires_grad_(False)
    b.requires_grad_(False)
    loss, _ = linear_cross_entropy(h, w, b, y, chunk_size=8)
    loss.sum().backward()
    ref_loss, _ = _reference(h.detach().requires_grad_(), w, b, y)
    assert w.grad is None and b.grad is None and h.grad is not None
    h2 = h.detach().requires_grad_()
    F.cross_entropy(F.linear(h2, w, b), y, reduction="sum").backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-6)


def test_autocast_bf16_follows_the_unchunked_path():
    """Under bf16 autocast both compute bf16 logits and an fp32 softmax: the losses agree to bf16
    rounding of the matmul (the same rounding), gradients to bf16 precision."""
    h, w, b, y = _data(N=40, D=32, V=70, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_ok = _reference(h, w, b, y)
        loss, ok = linear_cross_entropy(h, w, b, y, chunk_size=9)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(ok, ref_ok)
    want = _grads(ref_loss.mean(), (h, w, b))
    got = _grads(loss.mean(), (h, w, b))
    for a, e in zip(got, want):
        assert a.dtype == e.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("chunk", [9, 1000])  # several chunks (fp32 accumulator + reused bf16 buffer) and one
def test_bf16_weights_as_fsdp2_gathers_them(chunk):
    """FSDP2's mixed precision hands the head bf16 weights: gradients come back bf16, accumulated in fp32."""
    h, w, b, y = _data(N=40, D=32, V=70, seed=4)
    hb, wb, bb = (t.detach().bfloat16().requires_grad_() for t in (h, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hb, wb, bb, y, chunk_size=chunk)
    got = _grads(loss.mean(), (hb, wb, bb))
    assert all(g.dtype == torch.bfloat16 for g in got)
    # reference: the same bf16 values in fp64
    hd, wd, bd = (t.detach().double().requires_grad_() for t in (hb, wb, bb))
    want = _grads(F.cross_entropy(F.linear(hd, wd, bd), y), (hd, wd, bd))
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=2e-2, atol=2e-3)


def test_nn_linear_helper_and_argument_checks():
    head = torch.nn.Linear(16, 50)
    h, _, _, y = _data()
    loss, _ = head_cross_entropy(h, head, y)
    torch.testing.assert_close(loss, F.cross_entropy(head(h), y, reduction="none"), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(h[None], head.weight, None, y)
    with pytest.raises(ValueError, match="does not match hidden size"):
        linear_cross_entropy(h[:, :8], head.weight, None, y)
    with pytest.raises(RuntimeError, match="must match"):
        linear_cross_entropy(h.double(), head.weight, None, y)
    assert default_chunk_size(102400) == 1310 and default_chunk_size(16384) == 8192


def test_only_chunks_are_materialised():
    """No tensor of N x V elements is created: track the largest allocation through a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, t.numel())
            return out

    h, w, b, y = _data(N=200, D=8, V=100)
    with Largest():
        loss, _ = linear_cross_entropy(h, w, b, y, chunk_size=16)
        loss.sum().backward()
    assert Largest.biggest <= 16 * 100  # one chunk of logits; the full 200 x 100 never exists


def _unchunked_forward(m, batch):
    """JanusPro.forward's losses as they were written before the chunked CE (full fp32 logits)."""
    from lit_janus.batch import IGNORE, TASK_ID

    embeds = m.input_embeddings(batch["input_ids"], batch.get("gen_mask"), batch.get("image_mask"),
                                batch.get("pixel_values"))
    h = m.hidden_states(embeds, batch.get("position_ids"))
    out = {}
    sel = batch["text_labels"] != IGNORE
    logits = m.lm_head(h[sel]).float()
    target = batch["text_labels"][sel]
    losses = F.cross_entropy(logits, target, reduction="none")
    task = batch["task_ids"][sel]
    for name in ("und", "text"):
        t = task == TASK_ID[name]
        out[f"{name}_loss"] = losses[t].mean()
        out[f"{name}_correct"] = (logits.argmax(-1) == target)[t].sum()
    sel = batch["gen_labels"] != IGNORE
    logits = m.gen_head(h[sel]).float()
    target = batch["gen_labels"][sel]
    out["gen_loss"] = F.cross_entropy(logits, target)
    out["gen_correct"] = (logits.argmax(-1) == target).sum()
    return out


@pytest.mark.parametrize("chunk_elements", [None, 7 * 512])  # default (one chunk here) and 7-token chunks
def test_model_forward_losses_and_gradients_equal_the_unchunked_path(tiny_config, tiny_processor, monkeypatch,
                                                                      chunk_elements):
    """JanusPro.forward (chunked CE) vs the full-logits cross-entropy on a packed three-task batch."""
    from PIL import Image

    import lit_janus.losses
    from lit_janus.batch import collate
    from lit_janus.checkpoint import build_model

    if chunk_elements:
        monkeypatch.setattr(lit_janus.losses, "DEFAULT_CHUNK_ELEMENTS", chunk_elements)

    torch.manual_seed(0)
    m = build_model(tiny_config)
    p = tiny_processor
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(20, 28, 3, generator=g) * 255).to(torch.uint8).numpy())
    codes = torch.randint(0, tiny_config.codebook_size, (p.num_image_tokens,), generator=g)
    samples = [p.understanding_sample(img, "what colour?", "green"), p.text_sample("the triangle is left of the circle."),
               p.t2i_sample("a red circle", codes), p.t2i_sample("two blue squares", codes.flip(0))]
    batch = collate(samples, p.pad_id, pack_length=sum(len(s) for s in samples) // 2 + 40)
    params = [q for q in m.parameters()]

    def run(fn):
        out = fn(batch)
        loss = out["und_loss"] + 0.5 * out["text_loss"] + 2.0 * out["gen_loss"]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return out, grads

    ours, g_ours = run(m)
    ref, g_ref = run(lambda b: _unchunked_forward(m, b))
    for k in ("und_loss", "text_loss", "gen_loss"):
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-6)
    for k in ("und_correct", "text_correct", "gen_correct"):
        assert int(ours[k]) == int(ref[k]), k
    names = [n for n, _ in m.named_parameters()]
    for n, a, e in zip(names, g_ours, g_ref):
        assert (a is None) == (e is None), n
        if a is not None:
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=lambda s: f"{n}: {s}")
