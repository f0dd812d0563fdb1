import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lit_janus.batch import collate
from lit_janus.vq import l2_nearest_code, vq_decode, vq_encode


@pytest.fixture(scope="module")
def hf_model(tiny_hf_dir):
    """transformers' own JanusForConditionalGeneration, loaded from what we saved."""
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(str(tiny_hf_dir)).eval()


def _image(seed=0, size=(37, 23)):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


@torch.no_grad()
def test_understanding_logits_match_transformers(tiny_model, tiny_processor, hf_model):
    p = tiny_processor
    s = p.understanding_sample(_image(), "what colour is the square?", "green")
    ids, pix = s.input_ids[None], s.pixel_values
    embeds = tiny_model.input_embeddings(ids, image_mask=s.image_mask[None], pixel_values=pix)
    ours = tiny_model.text_logits(tiny_model.hidden_states(embeds))
    theirs = hf_model(input_ids=ids, pixel_values=pix).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.abs().max() > 0


@torch.no_grad()
def test_generation_loss_matches_transformers_gen_head(tiny_model, tiny_processor, hf_model):
    """gen_head logits at <boi>, code0..code_{N-2} predict code0..code_{N-1} (first code supervised)."""
    p = tiny_processor
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, tiny_model.config.codebook_size, (p.num_image_tokens,), generator=g)
    prompt = torch.tensor(p.t2i_prompt_ids("a photo of two blue squares"))
    embeds = torch.cat([hf_model.get_input_embeddings()(prompt),
                        hf_model.prepare_embeddings_for_image_generation(codes[:-1])])[None]
    h = hf_model.model.language_model(inputs_embeds=embeds).last_hidden_state
    logits = hf_model.model.generation_head(h)[0, len(prompt) - 1 :]
    assert logits.shape[0] == p.num_image_tokens
    expected = F.cross_entropy(logits, codes)
    out = tiny_model(collate([p.t2i_sample("a photo of two blue squares", codes)], p.pad_id))
    torch.testing.assert_close(out["gen_loss"], expected, rtol=1e-5, atol=1e-5)
    assert int(out["gen_tokens"]) == p.num_image_tokens
    assert int(out["und_tokens"]) == 0 and int(out["text_tokens"]) == 0 and float(out["und_loss"]) == 0


@torch.no_grad()
def test_loss_masks_by_hand(tiny_model, tiny_processor):
    """Recompute each task's loss from full logits at positions chosen by hand."""
    p, m = tiny_processor, tiny_model
    und = p.understanding_sample(_image(2), "how many circles are there?", "three")
    txt = p.text_sample("the triangle is left of the circle.")
    out = m(collate([und], p.pad_id))
    h = m.hidden_states(m.input_embeddings(und.input_ids[None], image_mask=und.image_mask[None],
                                           pixel_values=und.pixel_values))[0]
    answer = p.encode(" three") + [p.eos_id]
    L = len(und)
    positions = list(range(L - len(answer) - 1, L - 1))  # the last prompt token .. the second-to-last answer token
    want = F.cross_entropy(m.text_logits(h[positions]), torch.tensor(answer))
    torch.testing.assert_close(out["und_loss"], want)
    assert int(out["und_tokens"]) == len(answer)

    out = m(collate([txt], p.pad_id))
    h = m.hidden_states(m.input_embeddings(txt.input_ids[None]))[0]
    want = F.cross_entropy(m.text_logits(h[:-1]), txt.input_ids[1:])
    torch.testing.assert_close(out["text_loss"], want)
    assert int(out["text_tokens"]) == len(txt) - 1


@torch.no_grad()
def test_packed_rows_never_attend_across_documents(tiny_model, tiny_processor):
    p, m = tiny_processor, tiny_model
    codes = torch.arange(p.num_image_tokens) % m.config.codebook_size
    t2i = p.t2i_sample("a red circle", codes)
    txt = p.text_sample("the triangle is left of the circle.")
    txt2 = p.text_sample("how many circles are there?")
    und = p.understanding_sample(_image(3), "what colour?", "green")
    alone = {s.task: m(collate([s], p.pad_id)) for s in (t2i, txt, und)}
    width = len(t2i) + len(txt) + len(und) + 5
    packed = collate([t2i, txt, und], p.pad_id, pack_length=width)
    assert packed["input_ids"].shape == (1, width)  # one row holding all three documents
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, len(t2i), len(t2i) + len(txt)]
    out = m(packed)
    for task, key in (("t2i", "gen"), ("text", "text"), ("und", "und")):
        torch.testing.assert_close(out[f"{key}_loss"], alone[task][f"{key}_loss"], rtol=1e-4, atol=1e-5)
    # changing the first document changes nothing for the others
    swapped = m(collate([p.t2i_sample("a photo of two blue squares", codes), txt, und], p.pad_id, pack_length=width + 8))
    torch.testing.assert_close(swapped["text_loss"], out["text_loss"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(swapped["und_loss"], out["und_loss"], rtol=1e-4, atol=1e-5)
    # two docs of the same task in one row: the mean over both equals the token-weighted mean alone
    both = m(collate([txt, txt2], p.pad_id, pack_length=len(txt) + len(txt2)))
    a, b = alone["text"], m(collate([txt2], p.pad_id))
    want = (a["text_loss"] * a["text_tokens"] + b["text_loss"] * b["text_tokens"]) / (a["text_tokens"] + b["text_tokens"])
    torch.testing.assert_close(both["text_loss"], want, rtol=1e-4, atol=1e-5)


def test_padding_rows_do_not_count(tiny_model, tiny_processor):
    p, m = tiny_processor, tiny_model
    short, long = p.text_sample("yes"), p.text_sample("the triangle is left of the circle.")
    b = collate([short, long], p.pad_id)
    assert b["input_ids"].shape == (2, len(long)) and (b["task_ids"][0, len(short):] == 0).all()
    with torch.no_grad():
        out = m(b)
    assert int(out["text_tokens"]) == len(short) - 1 + len(long) - 1


def test_missing_image_features_are_an_error(tiny_model, tiny_processor):
    p = tiny_processor
    und = p.understanding_sample(_image(), "what colour?", "green")
    b = collate([und], p.pad_id)
    b["pixel_values"] = torch.cat([b["pixel_values"], b["pixel_values"]])
    with pytest.raises(ValueError, match="image placeholder positions"):
        tiny_model(b)


def test_l2_lookup_differs_from_plain_nearest_neighbour():
    z = torch.tensor([[1.0, 0.0]])
    codebook = torch.tensor([[10.0, 1.0], [0.5, 0.5]])  # far but same direction vs near but 45 degrees off
    plain = torch.cdist(z, codebook).argmin(1)
    assert int(plain) == 1 and int(l2_nearest_code(z, codebook)) == 0


def test_l2_lookup_is_float32_under_autocast():
    """bf16-mixed training tokenises its targets under autocast: the codes must be the float32 ones."""
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(4096, 8, generator=g), torch.randn(1024, 8, generator=g)
    exact = l2_nearest_code(z, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(l2_nearest_code(z, codebook), exact)
        zn, en = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(codebook, dim=-1)
        in_bf16 = (-2 * zn @ en.t()).argmin(1)  # what an autocast matmul would have picked
    assert (in_bf16 != exact).any()  # this test can tell the two apart


@torch.no_grad()
def test_vq_encode_uses_cosine_lookup_and_decodes(tiny_model):
    vq = tiny_model.vq
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    codes = vq_encode(vq, pixels)
    assert codes.shape == (2, tiny_model.config.num_image_tokens)
    # DeepSeek's lookup is invariant to rescaling codebook rows; transformers' plain search is not
    original = vq.quantize.embedding.weight.clone()
    try:
        scale = torch.rand(original.shape[0], 1, generator=g) * 10 + 0.1
        vq.quantize.embedding.weight.mul_(scale)
        assert torch.equal(vq_encode(vq, pixels), codes)
        hf_codes = vq.encode(pixels).image_tokens.view(2, -1)
        assert not torch.equal(hf_codes, codes)
    finally:
        vq.quantize.embedding.weight.copy_(original)
    out = vq_decode(vq, codes)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="codes must lie in"):
        vq_decode(vq, codes + 1000)


@torch.no_grad()
def test_shared_vq_encoder_ablation_feeds_understanding_through_the_generation_adaptor(tmp_path, tiny_model, tiny_processor):
    """`und_encoder=vq` (Janus Table 5, exp. A): the image's VQ codes, embedded as generated codes
    are, fill the image slots; SigLIP and the aligner are not used. The choice survives export."""
    from dataclasses import replace

    from lit_janus.checkpoint import build_model, load_pretrained, save_transformers

    cfg = replace(tiny_model.config, und_encoder="vq")
    shared = build_model(cfg, tiny_model.janus.state_dict()).eval()
    pixels = tiny_processor.understanding_pixels(_image()).unsqueeze(0)
    expected = shared.code_embeddings(vq_encode(shared.vq, pixels))
    torch.testing.assert_close(shared.image_features(pixels), expected, rtol=0, atol=0)
    assert not torch.allclose(tiny_model.image_features(pixels), expected)
    b = collate([tiny_processor.understanding_sample(_image(), "what colour?", "green")], tiny_processor.pad_id)
    loss = shared(b)["und_loss"]
    for p in shared.vision.parameters():
        p.add_(1.0)  # SigLIP is out of the loop
    assert torch.equal(shared(b)["und_loss"], loss)
    out = save_transformers(shared, tiny_processor, tmp_path / "shared")
    assert load_pretrained(out)[0].config.und_encoder == "vq"
    assert load_pretrained(save_transformers(tiny_model, tiny_processor, tmp_path / "plain"))[0].config.und_encoder == "siglip"
    with pytest.raises(ValueError, match="und_encoder='clip'"):
        replace(cfg, und_encoder="clip")


@torch.no_grad()
def test_flex_attention_gives_the_sdpa_losses_on_packed_rows(tiny_model, tiny_processor):
    """`attn_implementation: flex_attention` (issue 7's lever for packed documents: a block-sparse mask
    instead of sdpa's dense [B,1,T,T] one; the LLM only - transformers' Janus wrapper and SigLIP refuse
    it) computes the same losses. Forward only: torch has no flex-attention backward on the CPU."""
    from lit_janus.model import JanusPro

    p = tiny_processor
    codes = torch.arange(p.num_image_tokens) % tiny_model.config.codebook_size
    samples = [p.t2i_sample("a red circle", codes), p.text_sample("the triangle is left of the circle."),
               p.understanding_sample(_image(3), "what colour?", "green"), p.text_sample("yes")]
    batch = collate(samples, p.pad_id, pack_length=256)
    flex = JanusPro(tiny_model.config, "flex_attention")
    flex.janus.load_state_dict(tiny_model.janus.state_dict())
    assert flex.llm.config._attn_implementation == "flex_attention"
    ref, out = tiny_model(batch), flex(batch)
    for key in ("und_loss", "text_loss", "gen_loss"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5)
    # and packing still isolates documents under flex: the same text alone gives the same loss
    alone = flex(collate([samples[1]], p.pad_id))
    torch.testing.assert_close(alone["text_loss"], tiny_model(collate([samples[1]], p.pad_id))["text_loss"],
                               rtol=1e-4, atol=1e-5)


def test_flex_attention_runs_in_the_autocast_dtype(tiny_model, tiny_processor, monkeypatch):
    """Under bf16 autocast the rotary embedding returns float32 q/k beside a bf16 v; flex attention
    (not on autocast's list) must still get one low-precision dtype, as sdpa does through autocast."""
    from transformers.integrations import flex_attention

    from lit_janus.model import JanusPro

    seen, original = [], flex_attention.flex_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return original(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(flex_attention, "flex_attention_forward", spy)
    p = tiny_processor
    batch = collate([p.text_sample("the triangle is left of the circle."), p.text_sample("yes")], p.pad_id,
                    pack_length=64)
    flex = JanusPro(tiny_model.config, "flex_attention")
    flex.janus.load_state_dict(tiny_model.janus.state_dict())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # no flex backward on the CPU
        out = flex(batch)
    assert seen and set(seen) == {(torch.bfloat16,) * 3}, seen
    assert torch.isfinite(out["text_loss"])
    seen.clear()
    with torch.no_grad():
        flex(batch)  # no autocast: float32 throughout, untouched
    assert set(seen) == {(torch.float32,) * 3}


def test_document_offsets_start_where_positions_restart():
    from lit_janus.attention import document_offsets

    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 0, 1, 0, 1]])  # row 0 ends in its padding
    assert document_offsets(pos).tolist() == [0, 3, 8, 12, 14, 16]
    assert document_offsets(torch.arange(5)[None].expand(3, 5)).tolist() == [0, 5, 10, 15]


@pytest.mark.parametrize("autocast", [False, True])
def test_varlen_attention_gives_the_sdpa_losses_on_packed_rows(tiny_model, tiny_processor, autocast, monkeypatch):
    """`attn_implementation: varlen_attention` (issue 7: flash attention over the packed documents, no
    mask) computes the same losses and gradients as sdpa's dense mask. On the CPU it runs the
    per-document sdpa loop; the flash kernel itself is checked on a GPU by benchmarks/train_step.py,
    whose table shows each variant's first-step loss."""
    import lit_janus.attention
    from lit_janus.model import JanusPro

    seen, original = [], lit_janus.attention._reference_varlen

    def spy(q, k, v, offsets, scale):
        seen.append((len(offsets), q.dtype))
        return original(q, k, v, offsets, scale)

    monkeypatch.setattr(lit_janus.attention, "_reference_varlen", spy)
    p = tiny_processor
    codes = torch.arange(p.num_image_tokens) % tiny_model.config.codebook_size
    samples = [p.t2i_sample("a red circle", codes), p.text_sample("the triangle is left of the circle."),
               p.understanding_sample(_image(3), "what colour?", "green"), p.text_sample("yes")]
    batch = collate(samples, p.pad_id, pack_length=256)
    n_docs = int((batch["position_ids"] == 0).sum())
    assert n_docs > batch["position_ids"].shape[0]  # really packed
    varlen = JanusPro(tiny_model.config, "varlen_attention")
    varlen.janus.load_state_dict(tiny_model.janus.state_dict())
    assert varlen.llm.config._attn_implementation == "varlen_attention"
    assert varlen.vision.config._attn_implementation == "sdpa"
    ref_model = JanusPro(tiny_model.config, "sdpa")
    ref_model.janus.load_state_dict(tiny_model.janus.state_dict())
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref, out = ref_model(batch), varlen(batch)
        for key in ("und_loss", "text_loss", "gen_loss"):
            torch.testing.assert_close(out[key], ref[key], **tol)
        sum(ref[k] for k in ("und_loss", "text_loss", "gen_loss")).backward()
        sum(out[k] for k in ("und_loss", "text_loss", "gen_loss")).backward()
    # every LLM layer went through the varlen function, with the documents, in autocast's dtype
    want = (n_docs + 1, torch.bfloat16 if autocast else torch.float32)
    assert seen == [want] * tiny_model.config.n_layer, seen
    if not autocast:
        for (name, a), b in zip(ref_model.llm.named_parameters(), varlen.llm.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="no attention mask"):
        varlen.hidden_states(varlen.llm.embed_tokens(batch["input_ids"]), batch["position_ids"],
                             torch.ones_like(batch["input_ids"]))
    # packing isolates documents: the same text alone gives the same loss
    with torch.no_grad():
        alone = varlen(collate([samples[1]], p.pad_id))["text_loss"]
    torch.testing.assert_close(alone, ref_model(collate([samples[1]], p.pad_id))["text_loss"].detach(),
                               rtol=1e-4, atol=1e-5)


def test_images_tokenise_in_float32_under_bf16_autocast(tiny_model):
    """On-the-fly training targets (bf16-mixed) are the float32 codes `extract_codes` writes: the encoder
    convolutions ran under autocast before, and moved a few percent of these argmins."""
    size = tiny_model.config.image_size
    pixels = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = tiny_model.encode_images(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tiny_model.encode_images(pixels), reference)
