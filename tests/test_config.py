import pytest
import torch

from lit_janus.config import Config
from lit_janus.model import JanusPro

# SigLIP's attention-pooling head: built and stored by DeepSeek, never used by Janus, absent from
# transformers' classes. 1024 latent + q/kv/proj Linear + LayerNorm + MLP(1024->4096->1024).
ATTN_POOL = 1024 + (1024 * 1024 + 1024) + (2048 * 1024 + 2048) + (1024 * 1024 + 1024) + 2048 + (4096 * 1024 + 4096) + (1024 * 4096 + 1024)


@pytest.mark.parametrize("name,expected", [("janus-pro-1b", 2_089_232_011), ("janus-pro-7b", 7_420_368_523)])
def test_preset_parameter_counts(name, expected):
    """Built on the meta device (no memory). Our model omits the unused attn_pool head; adding it
    back gives DeepSeek's totals (2,089,232,011 is also what the real 1B checkpoint holds)."""
    with torch.device("meta"):
        model = JanusPro(Config.from_name(name))
    n = sum(p.numel() for p in model.parameters())
    assert n + ATTN_POOL == expected
    assert model.lm_head.weight is not model.llm.embed_tokens.weight  # untied


def test_preset_shapes():
    c1, c7 = Config.from_name("janus-pro-1b"), Config.from_name("janus-pro-7b")
    assert (c1.n_layer, c1.n_embd, c1.n_head, c1.intermediate_size) == (24, 2048, 16, 5632)
    assert (c7.n_layer, c7.n_embd, c7.n_head, c7.intermediate_size) == (30, 4096, 32, 11008)
    for c in (c1, c7):
        assert c.vocab_size == 102400 and c.num_image_tokens == 576 and c.grid_size == 24
        assert (c.codebook_size, c.codebook_dim, c.vq_downsample) == (16384, 8, 16)
        assert (c.vision_width, c.vision_layers, c.patch_size, c.image_size) == (1024, 24, 16, 384)


def test_hf_round_trip_is_untied():
    c = Config.from_name("janus-pro-7b")
    hf = c.to_hf()
    assert hf.tie_word_embeddings is False and hf.text_config.tie_word_embeddings is False
    back = Config.from_hf(hf, name=c.name)
    assert back == c


@pytest.mark.parametrize("overrides,message", [
    ({"n_embd": 100, "n_head": 3}, "not divisible"),
    ({"patch_size": 16}, "same token grid"),
    ({"vq_base_channels": 40}, "multiple of 32"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config.from_name("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        Config.from_name("janus-pro-3b")
