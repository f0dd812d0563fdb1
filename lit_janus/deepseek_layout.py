"""DeepSeek's checkpoint layout (`deepseek-ai/Janus-Pro-1B`) translated into transformers' names.

DeepSeek ships timm-style SigLIP with fused `qkv`, LlamaGen VQ names (`conv_blocks`, `res`, `mid.0`),
`gen_head.*` and `gen_embed`, and a config.json that names presets rather than shapes; transformers'
port (`deepseek-community/Janus-Pro-1B`) is the layout our model is built in. Only two kinds of keys
are known to be unused: SigLIP's attention-pooling head (`attn_pool.*`, never called by Janus) and
the VQ's `codebook_used` statistics buffer. Any other key that does not translate is an error.
"""

from __future__ import annotations

import math
import re

import torch

from lit_janus.config import Config
from lit_janus.weight_files import CheckpointError

KNOWN_UNUSED = (re.compile(r"^vision_model\.vision_tower\.attn_pool\."), re.compile(r"quantize\.codebook_used$"))
# Heads cannot be read off weight shapes; DeepSeek's config only names a SigLIP preset.
SIGLIP_HEADS = {"siglip_large_patch16_384": 16, "siglip_so400m_patch14_384": 16, "siglip_so400m_patch14_224": 16}


def known_unused(key: str) -> bool:
    """Whether `key` is one of the two kinds of weights Janus-Pro never uses (in either layout)."""
    return any(p.search(key) for p in KNOWN_UNUSED)


_VQ_RENAMES = [
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.res\.(\d+)\."), r"\1.down.\2.block.\3."),
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\."), r"\1.down.\2.attn.\3."),
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.downsample\."), r"\1.down.\2.downsample."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.res\.(\d+)\."), r"\1.up.\2.block.\3."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\."), r"\1.up.\2.attn.\3."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.upsample\."), r"\1.up.\2.upsample."),
    (re.compile(r"^(encoder|decoder)\.mid\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.1\."), r"\1.mid.attn_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.2\."), r"\1.mid.block_2."),
]
_VIT_RENAMES = [
    (re.compile(r"^blocks\.(\d+)\.norm1\."), r"encoder.layers.\1.layer_norm1."),
    (re.compile(r"^blocks\.(\d+)\.norm2\."), r"encoder.layers.\1.layer_norm2."),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\."), r"encoder.layers.\1.self_attn.projection_layer."),
    (re.compile(r"^blocks\.(\d+)\.mlp\."), r"encoder.layers.\1.mlp."),
    (re.compile(r"^patch_embed\.proj\."), "embeddings.patch_embedding."),
    (re.compile(r"^norm\."), "post_layernorm."),
]
_MLP_PROJECTOR = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


def describe_unused(keys: list[str]) -> str:
    """Name the known-unused weights by group, e.g. for the log line of a load."""
    groups = []
    if any("attn_pool" in k for k in keys):
        groups.append("vision_model.vision_tower.attn_pool.* (SigLIP's pooling head, never used by Janus)")
    if any(k.endswith("codebook_used") for k in keys):
        groups.append("quantize.codebook_used (the VQ's usage statistics buffer)")
    return "; ".join(groups)


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return None


def deepseek_to_transformers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and split fused qkv of) DeepSeek keys. Returns (new state dict, dropped known-unused keys).
    Raises CheckpointError for keys that are not part of Janus-Pro."""
    out: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, t in sd.items():
        if known_unused(key):
            dropped.append(key)
            continue
        new = None
        if key.startswith("language_model.model."):
            new = "model.language_model." + key[len("language_model.model."):]
        elif key == "language_model.lm_head.weight":
            new = "lm_head.weight"
        elif key == "gen_embed.weight":
            new = "model.generation_embeddings.weight"
        elif key.startswith("gen_head."):
            new = {"gen_head.output_mlp_projector.weight": "model.generation_head.proj_out.weight",
                   "gen_head.output_mlp_projector.bias": "model.generation_head.proj_out.bias",
                   "gen_head.vision_head.weight": "model.generation_head.vision_head.weight",
                   "gen_head.vision_head.bias": "model.generation_head.vision_head.bias"}.get(key)
        elif key.startswith(("aligner.", "gen_aligner.")):
            prefix, rest = key.split(".", 1)
            m = _MLP_PROJECTOR.match(rest)
            if m and int(m.group(1)) % 2 == 0:  # MlpProjector: Linear at even indices, GELU between
                i = int(m.group(1)) // 2
                target = "model.aligner" if prefix == "aligner" else "model.generation_aligner"
                new = f"{target}.fc1.{m.group(2)}" if i == 0 else f"{target}.hidden_layers.{i - 1}.{m.group(2)}"
        elif key.startswith("gen_vision_model."):
            rest = key[len("gen_vision_model."):]
            new = "model.vqmodel." + (_rename(rest, _VQ_RENAMES) or rest)
        elif key.startswith("vision_model.vision_tower."):
            rest = key[len("vision_model.vision_tower."):]
            base = "model.vision_model."
            if rest == "pos_embed":
                out[base + "embeddings.position_embedding.weight"] = t.reshape(t.shape[-2], t.shape[-1])
                continue
            qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", rest)
            if qkv:
                for name, part in zip("qkv", t.chunk(3, dim=0)):
                    out[f"{base}encoder.layers.{qkv.group(1)}.self_attn.{name}_proj.{qkv.group(2)}"] = part
                continue
            renamed = _rename(rest, _VIT_RENAMES)
            new = base + renamed if renamed else None
        if new is None:
            unknown.append(key)
        else:
            out[new] = t
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) in the DeepSeek checkpoint are not part of Janus-Pro: {unknown[:8]}"
        )
    return out, dropped


def config_from_deepseek(cfg: dict, sd: dict[str, torch.Tensor]) -> Config:
    """Architecture from DeepSeek's config.json, completed from weight shapes (its VQ-16 and
    SigLIP entries name presets rather than listing shapes)."""
    lang = cfg.get("language_config") or {}
    vparams = (cfg.get("vision_config") or {}).get("params") or {}

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"DeepSeek checkpoint lacks {key!r}")
        return sd[key]

    pos = need("vision_model.vision_tower.pos_embed")
    width, n_pos = pos.shape[-1], pos.shape[-2]
    patch = need("vision_model.vision_tower.patch_embed.proj.weight").shape[-1]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"vision_model\.vision_tower\.blocks\.(\d+)\.", k))}
    mlp = need("vision_model.vision_tower.blocks.0.mlp.fc1.weight").shape[0]
    heads = vparams.get("num_heads") or vparams.get("heads") or SIGLIP_HEADS.get(vparams.get("model_name"), width // 64)
    vq = "gen_vision_model."
    base = need(vq + "encoder.conv_in.weight").shape[0]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"gen_vision_model\.encoder\.conv_blocks\.(\d+)\.", k))})
    mult = [need(f"{vq}encoder.conv_blocks.{i}.res.0.conv1.weight").shape[0] // base for i in levels]
    n_res = len({int(m.group(1)) for k in sd if (m := re.match(r"gen_vision_model\.encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    codebook = need(vq + "quantize.embedding.weight")
    embed = need("language_model.model.embed_tokens.weight")
    n_layer = len({int(m.group(1)) for k in sd if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", k))})
    try:
        return Config(
            name=cfg.get("_name_or_path", "deepseek"),
            n_layer=lang.get("num_hidden_layers", n_layer),
            n_embd=embed.shape[1],
            n_head=lang["num_attention_heads"] if "num_attention_heads" in lang else embed.shape[1] // 128,
            n_query_groups=lang.get("num_key_value_heads") or lang.get("num_attention_heads", embed.shape[1] // 128),
            intermediate_size=need("language_model.model.layers.0.mlp.gate_proj.weight").shape[0],
            vocab_size=embed.shape[0],
            max_position_embeddings=lang.get("max_position_embeddings", 16384),
            rope_theta=lang.get("rope_theta", 10000.0),
            rms_norm_eps=lang.get("rms_norm_eps", 1e-6),
            vision_width=width,
            vision_layers=len(blocks),
            vision_heads=heads,
            vision_mlp_ratio=mlp / width,
            patch_size=patch,
            image_size=int(math.isqrt(n_pos)) * patch,
            codebook_size=codebook.shape[0],
            codebook_dim=codebook.shape[1],
            vq_base_channels=base,
            vq_channel_multiplier=mult,
            vq_num_res_blocks=n_res,
            vq_latent_channels=need(vq + "quant_conv.weight").shape[1],
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot derive the architecture from the DeepSeek checkpoint: {e}") from None
