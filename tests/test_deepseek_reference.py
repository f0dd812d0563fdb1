"""Sanity tests of the test-side DeepSeek re-implementation and of its hub-layout writer."""

import json
import re

import pytest
import torch

from deepseek_reference import (
    CODEBOOK_USED_LEN, DeepSeekRefConfig, DeepSeekRefModel, config_from_dict, deepseek_config_dict,
    write_deepseek_checkpoint,
)


@pytest.fixture(scope="module")
def ref():
    return DeepSeekRefModel(DeepSeekRefConfig())


def _patterns(keys):
    return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}


# Every key pattern of DeepSeek's MultiModalityCausalLM state dict. Checked against a checkpoint
# that DeepSeek's own code (deepseek-ai/Janus @1daa72f) built and saved: 684 keys with the real
# towers, 288 at the default tiny size.
EXPECTED = {
    "vision_model.vision_tower.pos_embed", "vision_model.vision_tower.patch_embed.proj.weight",
    "vision_model.vision_tower.patch_embed.proj.bias", "vision_model.vision_tower.norm.weight",
    "vision_model.vision_tower.norm.bias", "vision_model.vision_tower.attn_pool.latent",
    *(f"vision_model.vision_tower.blocks.N.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1",
                                                              "mlp.fc2") for p in ("weight", "bias")),
    *(f"vision_model.vision_tower.attn_pool.{m}.{p}" for m in ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2")
      for p in ("weight", "bias")),
    *(f"{a}.layers.N.{p}" for a in ("aligner", "gen_aligner") for p in ("weight", "bias")),
    *(f"gen_head.{m}.{p}" for m in ("output_mlp_projector", "vision_head") for p in ("weight", "bias")),
    "gen_embed.weight",
    "gen_vision_model.quantize.embedding.weight", "gen_vision_model.quantize.codebook_used",
    *(f"gen_vision_model.{m}.{p}" for m in ("quant_conv", "post_quant_conv") for p in ("weight", "bias")),
    *(f"gen_vision_model.{e}.{m}.{p}" for e in ("encoder", "decoder")
      for m in ("conv_in", "norm_out", "conv_out", "mid.N.norm1", "mid.N.conv1", "mid.N.norm2", "mid.N.conv2",
                "mid.N.norm", "mid.N.q", "mid.N.k", "mid.N.v", "mid.N.proj_out",
                *(f"conv_blocks.N.res.N.{r}" for r in ("norm1", "conv1", "norm2", "conv2", "nin_shortcut")),
                *(f"conv_blocks.N.attn.N.{r}" for r in ("norm", "q", "k", "v", "proj_out")))
      for p in ("weight", "bias")),
    *(f"gen_vision_model.encoder.conv_blocks.N.downsample.conv.{p}" for p in ("weight", "bias")),
    *(f"gen_vision_model.decoder.conv_blocks.N.upsample.conv.{p}" for p in ("weight", "bias")),
    "language_model.model.embed_tokens.weight", "language_model.model.norm.weight", "language_model.lm_head.weight",
    *(f"language_model.model.layers.N.{m}.weight" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")),
}


def test_state_dict_keys_are_deepseeks(ref):
    sd = ref.state_dict()
    assert _patterns(sd) == EXPECTED
    assert len(sd) == 288
    c = ref.cfg
    assert sd["vision_model.vision_tower.pos_embed"].shape == (1, c.num_image_tokens, c.vision_width)
    assert sd["vision_model.vision_tower.blocks.0.attn.qkv.weight"].shape == (3 * c.vision_width, c.vision_width)
    assert sd["gen_vision_model.quantize.codebook_used"].shape == (CODEBOOK_USED_LEN,)
    assert sd["gen_vision_model.quantize.embedding.weight"].shape == (c.codebook_size, c.codebook_dim)
    assert sd["aligner.layers.0.weight"].shape == (c.llm_hidden, c.vision_width)
    assert not torch.equal(sd["language_model.lm_head.weight"], sd["language_model.model.embed_tokens.weight"])
    # encoder attention only at the lowest resolution; the decoder has num_res_blocks + 1 res blocks
    last = len(c.vq_ch_mult) - 1
    assert {k.split(".")[3] for k in sd if re.match(r"gen_vision_model\.encoder\.conv_blocks\.\d+\.attn", k)} == {str(last)}
    assert {k.split(".")[5] for k in sd if k.startswith("gen_vision_model.decoder.conv_blocks.0.res.")} == \
        {str(i) for i in range(c.vq_num_res_blocks + 1)}


def test_real_towers_key_count():
    # 684 keys = what DeepSeek's MultiModalityCausalLM produced with SigLIP-L + VQ-16 and a 2-layer LLM;
    # built on the meta device so nothing is allocated
    with torch.device("meta"):
        m = DeepSeekRefModel(DeepSeekRefConfig.real_towers(), seed=None)
    sd = m.state_dict()
    assert len(sd) == 684 and _patterns(sd) == EXPECTED
    assert sd["vision_model.vision_tower.pos_embed"].shape == (1, 576, 1024)
    assert sd["gen_vision_model.decoder.conv_blocks.0.attn.2.q.weight"].shape == (512, 512, 1, 1)


def test_forward_shapes(ref):
    c = ref.cfg
    with torch.no_grad():
        pix = torch.rand(2, 3, c.image_size, c.image_size) * 2 - 1
        assert ref.vision_features(pix).shape == (2, c.num_image_tokens, c.vision_width)
        codes = ref.vq_encode(pix)
        assert codes.shape == (2, c.vq_grid ** 2) and codes.max() < c.codebook_size
        assert ref.vq_decode(codes).shape == (2, 3, c.image_size, c.image_size)
        n = c.num_image_tokens
        ids = torch.tensor([[1, 2, 3] + [-1] * n + [4, 5], [-1] * n + [6, 7, 8, 9, 10]])
        seq_mask = ids < 0
        emb_mask = torch.ones(2, 1, c.num_image_tokens, dtype=torch.bool)
        emb = ref.prepare_inputs_embeds(ids, pix[:, None], seq_mask, emb_mask)
        img = ref.aligner(ref.vision_features(pix))
        assert torch.equal(emb[0, 3:3 + n], img[0]) and torch.equal(emb[1, :n], img[1])
        assert torch.equal(emb[1, n:], ref.language_model.get_input_embeddings()(ids[1, n:]))
        assert (ids < 0).any()  # input_ids untouched
        h = ref.llm_hidden(emb)
        assert ref.gen_logits(h).shape == (2, ids.shape[1], c.codebook_size)
        assert ref.lm_logits(h).shape == (2, ids.shape[1], c.vocab_size)


def test_l2_lookup_differs_from_plain_nearest_neighbour():
    m = DeepSeekRefModel(DeepSeekRefConfig())
    vq = m.gen_vision_model
    with torch.no_grad():
        # Code 0 is long and points the same way as z; code 1 is short and sits nearer to z in
        # Euclidean terms but at an angle. Cosine picks 0; plain nearest neighbour picks 1.
        e = torch.zeros_like(vq.quantize.embedding.weight)
        e[:, 0] = -1.0
        e[0, 1] = 10.0
        e[1, 1], e[1, 2] = 1.0, 0.5
        vq.quantize.embedding.weight.copy_(e)
        vq.quant_conv.weight.zero_()
        vq.quant_conv.bias.zero_()
        vq.quant_conv.bias[1] = 1.0  # z = (0, 1, 0, ...) at every position
        pix = torch.zeros(1, 3, m.cfg.image_size, m.cfg.image_size)
        assert (m.vq_encode(pix) == 0).all()
        assert (m.vq_encode(pix, l2=False) == 1).all()


@pytest.mark.parametrize("shards,st", [(1, False), (3, False), (1, True), (2, True)])
def test_writer_layout(tmp_path, ref, tiny_tokenizer, shards, st):
    out = write_deepseek_checkpoint(ref, tmp_path / "ds", tiny_tokenizer, shards=shards, safetensors=st)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "multi_modality" and cfg["architectures"] == ["MultiModalityCausalLM"]
    assert cfg["vision_config"]["cls"] == "CLIPVisionTower" and cfg["gen_vision_config"]["cls"] == "VQ-16"
    assert cfg["vision_config"]["params"]["select_layer"] == -1
    assert cfg["language_config"]["model_type"] == "llama"
    assert config_from_dict(cfg) == ref.cfg
    stem, ext = ("model", "safetensors") if st else ("pytorch_model", "bin")
    if shards == 1:
        files = [out / f"{stem}.{ext}"]
        assert not list(out.glob("*.index.json"))
    else:
        index = json.loads((out / f"{stem}.{ext}.index.json").read_text())
        files = sorted(out.glob(f"{stem}-*-of-{shards:05d}.{ext}"))
        assert [f.name for f in files] == sorted(set(index["weight_map"].values()))
        assert len(files) == shards and set(index["weight_map"]) == set(ref.state_dict())
    sd = {}
    for f in files:
        if st:
            from safetensors.torch import load_file
            part = load_file(str(f))
        else:
            part = torch.load(f, weights_only=True)
        if shards > 1:
            assert all(index["weight_map"][k] == f.name for k in part)
        sd.update(part)
    if shards > 1:
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())
    mine = ref.state_dict()
    assert set(sd) == set(mine) and all(torch.equal(sd[k], mine[k]) for k in mine)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "VLMImageProcessor" and pre["image_size"] == ref.cfg.image_size
    assert pre["min_size"] == 14 and pre["image_mean"] == pre["image_std"] == [0.5] * 3
    proc = json.loads((out / "processor_config.json").read_text())
    assert proc["num_image_tokens"] == ref.cfg.num_image_tokens and proc["sft_format"] == "deepseek"
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "LlamaTokenizer" and tok_cfg["pad_token"] is None
    assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == "<｜▁pad▁｜>"
    assert (out / "tokenizer.json").is_file()


def test_writer_dtype_and_reload(tmp_path, ref):
    out = write_deepseek_checkpoint(ref, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    sd = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert sd["language_model.lm_head.weight"].dtype == torch.bfloat16
    assert not (out / "tokenizer.json").exists()
    again = DeepSeekRefModel(config_from_dict(json.loads((out / "config.json").read_text())), seed=None)
    again.load_state_dict(sd, strict=True)


def test_real_presets_are_named_like_the_hub():
    with torch.device("meta"):
        m = DeepSeekRefModel(DeepSeekRefConfig.real_towers(llm_hidden=2048, llm_heads=16, llm_kv_heads=16,
                                                            llm_ffn=5632, llm_layers=24, vocab_size=102400), seed=None)
    cfg = deepseek_config_dict(m, "bfloat16")
    assert cfg["vision_config"]["params"] == {"image_size": 384, "model_name": "siglip_large_patch16_384",
                                              "select_feature": "same", "select_layer": -1}
    assert cfg["gen_vision_config"]["params"] == {"image_token_size": 16384, "n_embed": 8}
    assert cfg["gen_head_config"]["params"] == {"image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048}
    assert cfg["aligner_config"]["params"] == {"depth": 2, "input_dim": 1024, "n_embed": 2048,
                                               "projector_type": "mlp_gelu"}
    assert "rms_norm_eps" not in cfg["language_config"] and cfg["language_config"]["vocab_size"] == 102400
