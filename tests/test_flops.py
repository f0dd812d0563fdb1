import torch

from lit_janus.batch import collate
from lit_janus.flops import attention_token_pairs, part_params, step_flops
from lit_janus.model import JanusPro


def test_part_params_match_the_modules(tiny_config):
    m = JanusPro(tiny_config)
    p = part_params(tiny_config)
    count = lambda mod: sum(x.numel() for n, x in mod.named_parameters() if "norm" not in n)  # noqa: E731
    assert p["llm"] == count(m.llm.layers)
    assert p["lm_head"] == count(m.lm_head)
    assert p["gen_head"] == count(m.gen_head) and p["gen_aligner"] == count(m.gen_aligner)
    assert p["aligner"] == count(m.aligner)
    assert p["vision"] == count(m.vision.encoder) + m.vision.embeddings.patch_embedding.weight.numel()


def test_attention_pairs_follow_packing():
    pos = torch.tensor([[0, 1, 2, 0, 1, 5, 6], [0, 1, 2, 3, 4, 5, 6]])
    real = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert attention_token_pairs(pos, real) == 3 * 3 + 2 * 2 + 4 * 4


def test_step_flops_counts_each_task(tiny_config, tiny_processor):
    p, c = tiny_processor, tiny_config
    txt = collate([p.text_sample("yes")], p.pad_id)
    n = len(p.text_sample("yes"))
    pp = part_params(c)
    want = 6 * (pp["llm"] * n + pp["lm_head"] * (n - 1) + c.n_layer * c.n_embd * n * n)
    assert step_flops(c, txt) == want
