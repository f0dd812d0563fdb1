"""DeepSeek's own layout (deepseek-ai/Janus-Pro-*): load, compare with DeepSeek's semantics, convert.

The reference model (tests/deepseek_reference.py) is our independent re-implementation of
DeepSeek's MultiModalityCausalLM, checked bit-exact against DeepSeek's code; the checkpoints are
written in the hub's real file layout (config.json "multi_modality", .bin pickles or shards).
"""

import logging

import pytest
import torch

from deepseek_reference import DeepSeekRefConfig, DeepSeekRefModel, write_deepseek_checkpoint
from lit_janus.checkpoint import CheckpointError, detect_layout, load_pretrained
from lit_janus.convert import main as convert_main


@pytest.fixture(scope="module")
def ref(tiny_tokenizer):
    return DeepSeekRefModel(DeepSeekRefConfig(vocab_size=len(tiny_tokenizer) + 7), seed=3).eval()


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory, ref, tiny_tokenizer):
    return write_deepseek_checkpoint(ref, tmp_path_factory.mktemp("ds") / "Janus-Pro-tiny", tiny_tokenizer)


@pytest.fixture(scope="module")
def loaded(ds_dir):
    return load_pretrained(ds_dir)


def _inputs(proc, ref):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.tensor([proc.understanding_ids("what colour is the square?")])
    return ids, pixels


@torch.no_grad()
def test_outputs_equal_deepseek_semantics(loaded, ref):
    model, proc = loaded
    ids, pixels = _inputs(proc, ref)
    seq_mask = ids == proc.image_id
    ref_embeds = ref.prepare_inputs_embeds(ids, pixels[:, None], seq_mask, torch.ones(1, 1, 16, dtype=torch.bool))
    embeds = model.input_embeddings(ids, image_mask=seq_mask, pixel_values=pixels)
    torch.testing.assert_close(embeds, ref_embeds, rtol=1e-5, atol=1e-5)
    h_ref = ref.llm_hidden(ref_embeds)
    h = model.hidden_states(embeds)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.text_logits(h), ref.lm_logits(h_ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.gen_logits(h), ref.gen_logits(h_ref), rtol=1e-5, atol=1e-5)
    codes = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.code_embeddings(codes), ref.prepare_gen_img_embeds(codes))


@torch.no_grad()
def test_vq_matches_deepseek_l2_lookup(loaded, ref):
    model, _ = loaded
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    codes = model.encode_images(pixels)
    assert torch.equal(codes, ref.vq_encode(pixels))
    # the reference's codebook rows have very different norms: a plain search picks other codes
    assert not torch.equal(codes, ref.vq_encode(pixels, l2=False))
    torch.testing.assert_close(model.decode_codes(codes), ref.vq_decode(codes), rtol=1e-5, atol=1e-5)


def test_shapes_and_ids_are_read_from_the_checkpoint(loaded, ref, tiny_tokenizer):
    model, proc = loaded
    c = model.config
    assert (c.n_layer, c.n_embd, c.vocab_size) == (2, 64, len(tiny_tokenizer) + 7)
    assert (c.vision_width, c.vision_layers, c.vision_heads, c.patch_size, c.image_size) == (64, 2, 4, 8, 32)
    assert (c.codebook_size, c.vq_channel_multiplier, c.vq_num_res_blocks) == (64, [1, 1, 2, 2], 1)
    assert c.image_token_id == proc.image_id == tiny_tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert proc.pad_id == tiny_tokenizer.convert_tokens_to_ids("<｜▁pad▁｜>")


def test_known_unused_weights_are_named(ds_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lit_janus.checkpoint"):
        load_pretrained(ds_dir)
    assert "attn_pool.*" in caplog.text and "quantize.codebook_used" in caplog.text


@pytest.mark.parametrize("kw", [{"shards": 3}, {"safetensors": True}, {"shards": 2, "safetensors": True},
                                {"dtype": torch.bfloat16}])
@torch.no_grad()
def test_every_file_layout_loads(tmp_path, ref, tiny_tokenizer, kw, loaded):
    d = write_deepseek_checkpoint(ref, tmp_path / "ck", tiny_tokenizer, **kw)
    assert detect_layout(d) == "deepseek"
    model, proc = load_pretrained(d)
    w = ref.state_dict()["language_model.lm_head.weight"]
    want = w.to(kw["dtype"]).float() if "dtype" in kw else w
    assert torch.equal(model.lm_head.weight, want)


@torch.no_grad()
def test_convert_round_trip_to_transformers(tmp_path, ds_dir, ref, loaded):
    """DeepSeek layout -> convert -> transformers' own class loads it, nothing missing, same logits."""
    from transformers import JanusForConditionalGeneration

    dst = tmp_path / "hf"
    assert convert_main([str(ds_dir), str(dst)]) == 0
    hf, info = JanusForConditionalGeneration.from_pretrained(str(dst), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hf.eval()
    assert hf.lm_head.weight.data_ptr() != hf.model.language_model.embed_tokens.weight.data_ptr()
    _, proc = loaded
    ids, pixels = _inputs(proc, ref)
    logits = hf(input_ids=ids, pixel_values=pixels).logits
    seq_mask = ids == proc.image_id
    ref_h = ref.llm_hidden(ref.prepare_inputs_embeds(ids, pixels[:, None], seq_mask, torch.ones(1, 1, 16, dtype=torch.bool)))
    torch.testing.assert_close(logits, ref.lm_logits(ref_h), rtol=1e-5, atol=1e-5)
    # generation path: prompt + code embeddings through transformers' modules vs DeepSeek's
    prompt = torch.tensor([proc.t2i_prompt_ids("a red circle")])
    codes = torch.randint(0, 64, (1, 15), generator=torch.Generator().manual_seed(2))
    e = torch.cat([hf.get_input_embeddings()(prompt), hf.prepare_embeddings_for_image_generation(codes)], 1)
    ours = hf.model.generation_head(hf.model.language_model(inputs_embeds=e).last_hidden_state)
    ref_e = torch.cat([ref.language_model.get_input_embeddings()(prompt), ref.prepare_gen_img_embeds(codes)], 1)
    torch.testing.assert_close(ours, ref.gen_logits(ref.llm_hidden(ref_e)), rtol=1e-5, atol=1e-5)


def _edit_bin(d, fn):
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    fn(sd)
    torch.save(sd, d / "pytorch_model.bin")


def test_bad_deepseek_checkpoints(tmp_path, ref, tiny_tokenizer):
    d = write_deepseek_checkpoint(ref, tmp_path / "a", tiny_tokenizer)
    _edit_bin(d, lambda sd: sd.update({"vision_model.vision_tower.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not part of Janus-Pro.*extra_head"):
        load_pretrained(d)
    d = write_deepseek_checkpoint(ref, tmp_path / "b", tiny_tokenizer)
    _edit_bin(d, lambda sd: sd.pop("gen_head.vision_head.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\) \['model.generation_head.vision_head.bias'\]"):
        load_pretrained(d)
    d = write_deepseek_checkpoint(ref, tmp_path / "c", tiny_tokenizer)
    _edit_bin(d, lambda sd: sd.update({"gen_embed.weight": torch.zeros(64, 4)}))
    with pytest.raises(CheckpointError, match=r"model.generation_embeddings.weight: checkpoint \(64, 4\)"):
        load_pretrained(d)
    d = write_deepseek_checkpoint(ref, tmp_path / "d", tiny_tokenizer, shards=2)
    (d / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="missing: pytorch_model-00002-of-00002.bin"):
        load_pretrained(d)
    d = write_deepseek_checkpoint(ref, tmp_path / "e", tiny_tokenizer)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04truncated")
    with pytest.raises(CheckpointError, match="cannot read weight file"):
        load_pretrained(d)
    d = write_deepseek_checkpoint(ref, tmp_path / "f", None)
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_pretrained(d)
