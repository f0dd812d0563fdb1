"""The samplers: counter-based Gumbel-max draws, the fast static-cache loop against the reference
loop, batch/padding independence, the official-style loop, and batched answers."""

import copy
import math

import pytest
import torch
from PIL import Image

from lit_janus import decoder as D
from lit_janus import generate as G
from lit_janus import sampling as S
from lit_janus.processor import PromptTooLongError


pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = ["a photo of a red circle", "two blue squares left of a green triangle, and three circles"]


@pytest.fixture(scope="module")
def sharp_model(tiny_model):
    """The tiny model with unit-scale weights: its logits are peaked and its attention depends on
    the context, so a wrong mask or position changes tokens (at init std 0.02 the noise would
    decide every draw and every test would pass)."""
    torch.manual_seed(1)
    m = copy.deepcopy(tiny_model).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, mod.weight.shape[1] ** -0.5)
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.normal_(0, 1.0)
    return m


def requests(processor, prompts, n, seed):
    cond, uncond, keys, *_ = G.image_requests(processor, prompts, n, seed)
    return cond, uncond, keys


# ---- noise and sampling ---------------------------------------------------------------------------
def test_noise_is_a_function_of_key_step_and_column_only():
    keys = torch.tensor([S.seed_key(1), S.seed_key(2), S.seed_key(1, 5)])
    u = S.uniform_noise(keys, 3, 1000)
    assert torch.equal(u[1:2], S.uniform_noise(keys[1:2], 3, 1000))  # a row does not see its batch
    assert torch.equal(u[:, :10], S.uniform_noise(keys, 3, 10))  # nor the vocabulary size
    assert not torch.equal(u, S.uniform_noise(keys, 4, 1000))  # steps differ
    assert len({S.seed_key(s, j) for s in range(50) for j in range(8)}) == 400  # no key collisions
    assert 0 < u.min() and u.max() < 1
    many = S.uniform_noise(torch.arange(200), 0, 500).flatten()
    assert abs(many.mean() - 0.5) < 0.005 and abs(many.var() - 1 / 12) < 0.002


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 4, None), (1.3, None, 0.8)])
def test_sample_draws_exactly_from_the_filtered_softmax(temperature, top_k, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40000
    draws = S.sample(logits.expand(n, -1), temperature, top_k, top_p, keys=torch.arange(n), step=7)
    freq = torch.bincount(draws, minlength=6).float() / n
    expected = S.filter_logits(logits[None] / temperature, top_k, top_p).softmax(-1)[0]
    # 4 standard errors of a frequency estimate
    assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n)
    assert freq[expected == 0].sum() == 0  # filtered tokens are never drawn


def test_filter_logits_keeps_top_k_and_the_nucleus():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isfinite(S.filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False]]
    p = logits.softmax(-1)[0]  # ~[.64, .09, .24, .03]
    kept = torch.isfinite(S.filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, False, True, False] and p[0] < 0.7 <= p[0] + p[2]
    assert torch.isfinite(S.filter_logits(logits, top_p=1e-6)).sum() == 1  # never empty
    assert torch.isfinite(S.filter_logits(torch.zeros(1, 5), top_p=1e-9)).sum() == 1  # ties: still one
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):  # 0 would drop every token
        S.filter_logits(logits, top_p=0.0)


def test_cfg_logits_and_greedy():
    cond, uncond = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 0.0]])
    assert torch.equal(S.cfg_logits(cond, uncond, 1.0), cond)
    assert torch.equal(S.cfg_logits(cond, uncond, 0.0), uncond)
    assert torch.equal(S.cfg_logits(cond, uncond, 5.0), torch.tensor([[-3.0, 15.0]]))
    assert S.sample(torch.tensor([[0.0, 9.0, 1.0]]), temperature=0).tolist() == [1]


# ---- the lean forward ---------------------------------------------------------------------------
def test_left_padded_prefill_matches_transformers_forward(sharp_model, tiny_processor):
    m = sharp_model
    rows = [tiny_processor.t2i_prompt_ids(p) for p in PROMPTS]
    ids, pad = D._left_pad(rows, tiny_processor.pad_id, "cpu")
    cache = D.KVCache.empty(m.llm.config, len(rows), ids.shape[1] + 4, torch.float32, "cpu")
    h = D.prefill(m, m.llm.embed_tokens(ids), pad, cache)
    for r, row in enumerate(rows):
        ref = m.hidden_states(m.llm.embed_tokens(torch.tensor([row])))[0, -1]
        torch.testing.assert_close(h[r], ref, atol=1e-5, rtol=1e-5)


# ---- text-to-image ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,sampling", [(2, {}), (1, dict(temperature=0.8, top_k=12, top_p=0.9, cfg_weight=3.0))])
def test_fast_sampler_matches_reference_loop(sharp_model, tiny_processor, n, sampling):
    """Prompts of different lengths in one left-padded batch give exactly the tokens of the
    reference loop run one prompt at a time with transformers' forward (the decoder's own
    concatenated q/k/v and gate/up weights included)."""
    cond, uncond, keys = requests(tiny_processor, PROMPTS, n, 11)
    fast = D.StaticDecoder(sharp_model).images(cond, uncond, keys, pad_id=tiny_processor.pad_id, **sampling)
    for p in range(2):
        ref = G.generate_reference(sharp_model, cond[n * p], uncond[n * p], keys[n * p: n * p + n], **sampling)
        assert torch.equal(fast[n * p: n * p + n], ref)
    # not a trivial agreement: prompts and images differ, and codes vary along the image
    assert not torch.equal(fast[0], fast[n]) and not torch.equal(fast[0], fast[-1])
    assert len(set(fast[0].tolist())) > 4


def test_reference_loop_continues_a_given_prefix(sharp_model, tiny_processor):
    """Teacher-forced codes stay as given, the codes after them follow from them, and a row with a
    zero-length prefix draws what it draws without one (the count probe relies on all three)."""
    cond, uncond, keys = requests(tiny_processor, PROMPTS[:1], 3, 4)
    free = G.generate_reference(sharp_model, cond[0], uncond[0], keys)
    source = G.generate_reference(sharp_model, cond[0], uncond[0], [k ^ 1 for k in keys])  # other images
    forced = G.generate_reference(sharp_model, cond[0], uncond[0], keys, prefix=source[:, :9], prefix_len=[0, 5, 9])
    assert torch.equal(forced[0], free[0])
    assert torch.equal(forced[1, :5], source[1, :5]) and torch.equal(forced[2, :9], source[2, :9])
    assert not torch.equal(forced[1, :5], free[1, :5])  # the prefix is not what the loop would draw anyway
    assert not torch.equal(forced[2, 9:], free[2, 9:]) and not torch.equal(forced[2, 9:], source[2, 9:])
    with pytest.raises(ValueError, match="prefix_len"):
        G.generate_reference(sharp_model, cond[0], uncond[0], keys, prefix=source[:, :9], prefix_len=[0, 5])
    with pytest.raises(ValueError, match="prefix_len"):
        G.generate_reference(sharp_model, cond[0], uncond[0], keys, prefix=source[:, :9], prefix_len=[0, 5, 10])


def test_image_depends_only_on_its_prompt_and_seed(sharp_model, tiny_processor):
    alone = G.generate(sharp_model, tiny_processor, [PROMPTS[1]], seeds=[5], decode=False).codes
    crowd = G.generate(sharp_model, tiny_processor, [PROMPTS[0], PROMPTS[1], "green"], images_per_prompt=[3, 1, 2],
                       seeds=[9, 5, 1], decode=False)
    assert crowd.prompt_index == [0, 0, 0, 1, 2, 2] and crowd.image_index == [0, 1, 2, 0, 0, 1]
    assert torch.equal(crowd.codes[3], alone[0])
    again = G.generate(sharp_model, tiny_processor, [PROMPTS[1]], seeds=[5], decode=False).codes
    other = G.generate(sharp_model, tiny_processor, [PROMPTS[1]], seeds=[6], decode=False).codes
    assert torch.equal(again, alone) and not torch.equal(other, alone)


def test_decoder_sees_weights_changed_in_place(sharp_model, tiny_processor):
    """Its concatenated weights are copies: training between calls (an in-place optimizer step, as
    under the sample-images callback) must reach the next call."""
    import copy

    m = copy.deepcopy(sharp_model)
    d = D.StaticDecoder(m)
    req = requests(tiny_processor, PROMPTS, 1, 3)
    before = d.images(*req, pad_id=tiny_processor.pad_id)
    with torch.no_grad():
        for layer in m.llm.layers:
            layer.self_attn.k_proj.weight.mul_(-1.0)
            layer.mlp.up_proj.weight.mul_(0.5)
    after = d.images(*req, pad_id=tiny_processor.pad_id)
    assert not torch.equal(after, before)
    assert torch.equal(after, D.StaticDecoder(m).images(*req, pad_id=tiny_processor.pad_id))
    # under autocast (the sample-images callback) the copies are kept in its dtype, not the fp32 masters'
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d.images(*req, pad_id=tiny_processor.pad_id)
    assert d._weights[0][1].dtype == torch.bfloat16 and m.llm.layers[0].self_attn.q_proj.weight.dtype == torch.float32


class _EagerReuse(D.StaticDecoder):
    """Exercises the graph path's state reuse (dummy rows, larger cache) without a GPU."""

    def __init__(self, model):
        super().__init__(model)
        self.cuda_graphs = True

    def _ensure_graphs(self, keys_fns):
        pass

    def _run(self, key, fn):
        fn()


def test_reused_state_with_dummy_rows_gives_the_same_tokens(sharp_model, tiny_processor):
    d = _EagerReuse(sharp_model)
    big = requests(tiny_processor, PROMPTS, 3, 0)
    small = requests(tiny_processor, ["green"], 1, 4)
    d.images(*big, pad_id=tiny_processor.pad_id)
    state = d.state
    out = d.images(*small, pad_id=tiny_processor.pad_id)
    assert d.state is state and state.n_seq == 6  # reused, padded with 5 dummy images
    assert torch.equal(out, D.StaticDecoder(sharp_model).images(*small, pad_id=tiny_processor.pad_id))


def test_generate_decodes_uint8_images(sharp_model, tiny_processor, tiny_config):
    gen = G.generate(sharp_model, tiny_processor, PROMPTS[:1], images_per_prompt=2)
    s = tiny_config.image_size
    assert gen.images.shape == (2, s, s, 3) and gen.images.dtype == torch.uint8
    assert gen.codes.shape == (2, tiny_config.num_image_tokens)
    assert gen.images.float().std() > 0


def test_official_loop_shapes_and_rows(sharp_model, tiny_processor, tiny_config):
    ids = tiny_processor.t2i_prompt_ids(PROMPTS[0])
    torch.manual_seed(0)
    codes, images = G.generate_official(sharp_model, ids, tiny_processor.pad_id, parallel_size=3)
    assert codes.shape == (3, tiny_config.num_image_tokens) and images.shape[0] == 3
    short, none = G.generate_official(sharp_model, ids, tiny_processor.pad_id, parallel_size=2, n_tokens=5,
                                      decode=False)
    assert short.shape == (2, 5) and none is None
    assert 0 <= int(codes.min()) and int(codes.max()) < tiny_config.codebook_size


def test_empty_and_too_long_prompts_raise(sharp_model, tiny_processor):
    with pytest.raises(ValueError, match="empty"):
        G.generate(sharp_model, tiny_processor, ["  "])
    with pytest.raises(PromptTooLongError):
        G.generate(sharp_model, tiny_processor, ["red " * 600])


# ---- understanding ------------------------------------------------------------------------------
def _naive_greedy(model, processor, image, question, n):
    """Full recompute every step through transformers' forward: no cache, no padding."""
    e = G.question_embeds(model, processor, image, question)[None]
    out = []
    for _ in range(n):
        tok = int(model.lm_head(model.hidden_states(e)[0, -1]).argmax())
        if tok == processor.eos_id:
            break
        out.append(tok)
        e = torch.cat([e, model.llm.embed_tokens(torch.tensor([[tok]]))], 1)
    return out


def test_batched_answers_match_single_and_naive_greedy(sharp_model, tiny_processor):
    images = [Image.new("RGB", (40, 24), (200, 30, 30)), [Image.new("RGB", (16, 16), (0, 0, 255))] * 2, None]
    questions = ["what colour is the square?", "how many circles are there? yes or no", "green"]
    batched = G.answer_ids(sharp_model, tiny_processor, images, questions, max_new_tokens=6)
    for im, q, got in zip(images, questions, batched):
        assert got == G.answer_ids(sharp_model, tiny_processor, [im], [q], max_new_tokens=6)[0]
        assert got == _naive_greedy(sharp_model, tiny_processor, im, q, 6)
    assert batched[0] != batched[1]
    text = G.answer(sharp_model, tiny_processor, images[:1], questions[:1], max_new_tokens=6)
    assert text == [tiny_processor.decode(batched[0]).strip()]


def test_sampled_answers_are_reproducible_per_question(sharp_model, tiny_processor):
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=20)
    both = G.answer_ids(sharp_model, tiny_processor, [None, None], ["yes", "what colour is the square?"],
                        seeds=[3, 4], **kw)
    one = G.answer_ids(sharp_model, tiny_processor, [None], ["what colour is the square?"], seeds=[4], **kw)
    assert both[1] == one[0]


class _EosHead(torch.nn.Module):
    def __init__(self, eos, vocab):
        super().__init__()
        self.eos, self.vocab = eos, vocab
        self.weight = torch.nn.Parameter(torch.zeros(vocab, 1))  # the decoder checks its identity

    def forward(self, h):
        return torch.nn.functional.one_hot(torch.full(h.shape[:-1], self.eos), self.vocab).float() * 10


def test_answers_stop_at_eos(sharp_model, tiny_processor, tiny_config):
    m = copy.deepcopy(sharp_model)
    m.janus.lm_head = _EosHead(tiny_processor.eos_id, tiny_config.vocab_size)
    d = D.StaticDecoder(m)
    assert G.answer_ids(m, tiny_processor, [None], ["yes"], max_new_tokens=50, decoder=d) == [[]]
    assert int(d.state.step) <= 9  # stopped within one check interval, not after 50 steps
