"""An independent, test-only re-implementation of DeepSeek's Janus-Pro `MultiModalityCausalLM`,
plus a writer of checkpoint directories in DeepSeek's hub layout (`deepseek-ai/Janus-Pro-1B`).

Written from DeepSeek's published architecture, not copied from it. Module names, state-dict
keys, buffers and forward semantics match `deepseek-ai/Janus` @1daa72f (`janus/models/*`):

- `vision_model.vision_tower`: timm-style SigLIP ViT. Fused `qkv` with bias, exact GELU,
  LayerNorm eps 1e-6, learned `pos_embed` of shape (1, N, width), no class token.
  `select_layer=-1` keeps every block. The output is the final `norm` over all patch tokens,
  with no pooling. The MAP head `attn_pool` exists, so its weights are in the checkpoint, but it
  is never called.
- `aligner` / `gen_aligner`: `MlpProjector` "mlp_gelu" with depth 2, so the keys are `layers.{0,2}`.
- `gen_vision_model`: LlamaGen VQ-16. GroupNorm(32, eps 1e-6), swish, encoder attention only at
  the lowest resolution, and a decoder with `num_res_blocks + 1` res blocks per level. Downsampling
  is a stride-2 conv with (0,1,0,1) padding; upsampling is nearest x2 followed by a conv. Lookup
  L2-normalises z and the codebook. `quantize.codebook_used` is a 65536-float buffer at every
  codebook size.
- `gen_head` (`output_mlp_projector`, GELU, `vision_head`), `gen_embed`, and
  `language_model` (transformers `LlamaForCausalLM`, untied `lm_head`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIGLIP_L = dict(image_size=384, vision_width=1024, vision_depth=24, vision_heads=16, patch_size=16, mlp_ratio=4.0)
VQ_16 = dict(vq_ch=128, vq_ch_mult=(1, 1, 2, 2, 4), vq_z_channels=256, vq_num_res_blocks=2,
             codebook_size=16384, codebook_dim=8)
CODEBOOK_USED_LEN = 65536  # hard-coded in DeepSeek's VectorQuantizer, whatever the codebook size


@dataclass
class DeepSeekRefConfig:
    # language model (DeepSeek-LLM loaded as plain Llama)
    llm_layers: int = 2
    llm_hidden: int = 64
    llm_heads: int = 4
    llm_kv_heads: int = 4
    llm_ffn: int = 128
    vocab_size: int = 416
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 16384
    # understanding encoder (SigLIP ViT)
    image_size: int = 32
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    patch_size: int = 8
    mlp_ratio: float = 4.0
    # generation tokenizer (VQ); channels must be multiples of 32 (GroupNorm(32))
    vq_ch: int = 32
    vq_ch_mult: tuple = (1, 1, 2, 2)  # x8 = patch_size: both pathways see the same 4x4 grid, as in Janus
    vq_z_channels: int = 32
    vq_num_res_blocks: int = 1
    codebook_size: int = 64
    codebook_dim: int = 8
    # aligners / generation head; None means llm_hidden (must be llm_hidden to feed the LLM)
    aligner_dim: int | None = None
    gen_aligner_dim: int | None = None
    gen_head_embed: int | None = None  # gen_head "image_token_embed" (its hidden width)
    extra_language_config: dict = field(default_factory=dict)

    @classmethod
    def real_towers(cls, **kw) -> "DeepSeekRefConfig":
        """The real SigLIP-L/16@384 + VQ-16 (as DeepSeek hard-codes them) with a configurable LLM."""
        return cls(**{**SIGLIP_L, **VQ_16, **kw})

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def vq_grid(self) -> int:
        return self.image_size // 2 ** (len(self.vq_ch_mult) - 1)

    def is_real_siglip(self) -> bool:
        return all(getattr(self, k) == v for k, v in SIGLIP_L.items())

    def is_real_vq(self) -> bool:
        return all(tuple(getattr(self, k)) == v if isinstance(v, tuple) else getattr(self, k) == v
                   for k, v in VQ_16.items())


# ------------------------------------------------------------------------------- SigLIP ViT
class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _SelfAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _AttnPool(nn.Module):
    """timm AttentionPoolLatent parameters (latent_len 1). Janus never calls it."""

    def __init__(self, dim, mlp_ratio):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, int(dim * mlp_ratio))


class _SigLIP(nn.Module):
    def __init__(self, c: DeepSeekRefConfig):
        super().__init__()
        d = c.vision_width
        self.patch_embed = nn.Module()  # timm PatchEmbed: only `proj` has weights
        self.patch_embed.proj = nn.Conv2d(3, d, c.patch_size, c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_image_tokens, d))
        self.blocks = nn.Sequential(*[_Block(d, c.vision_heads, c.mlp_ratio) for _ in range(c.vision_depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.attn_pool = _AttnPool(d, c.mlp_ratio)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(self.blocks(x))


class _Projector(nn.Module):  # MlpProjector "mlp_gelu", depth 2
    def __init__(self, din, dout):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(din, dout), nn.GELU(), nn.Linear(dout, dout))

    def forward(self, x):
        return self.layers(x)


class _GenHead(nn.Module):
    def __init__(self, n_embed, hidden, n_codes):
        super().__init__()
        self.output_mlp_projector, self.vision_activation = nn.Linear(n_embed, hidden), nn.GELU()
        self.vision_head = nn.Linear(hidden, n_codes)

    def forward(self, x):
        return self.vision_head(self.vision_activation(self.output_mlp_projector(x)))


# ------------------------------------------------------------------------------- VQ-16
def _gn(c):
    return nn.GroupNorm(32, c, eps=1e-6)


def _swish(x):
    return x * torch.sigmoid(x)  # written out as DeepSeek does (not F.silu) to keep bit-parity


class _Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(_swish(self.norm2(self.conv1(_swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Attn2d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, c, hh * ww) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=2)  # [b, query, key]
        return x + self.proj_out(torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww))


class _Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    bf16_quirk = True  # DeepSeek: off-fp32 input is interpolated in fp32 then cast to *bfloat16*

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        if x.dtype != torch.float32 and self.bf16_quirk:
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(torch.bfloat16)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


def _level(res, attn, resample=None, name="downsample"):
    m = nn.Module()
    m.res, m.attn = nn.ModuleList(res), nn.ModuleList(attn)
    if resample is not None:
        setattr(m, name, resample)
    return m


def _run_level(lvl, h):  # res[j] then attn[j] (attention levels only), then the resampler if any
    for j, r in enumerate(lvl.res):
        h = lvl.attn[j](r(h)) if len(lvl.attn) else r(h)
    for name in ("downsample", "upsample"):
        if hasattr(lvl, name):
            h = getattr(lvl, name)(h)
    return h


class _Encoder(nn.Module):
    def __init__(self, c: DeepSeekRefConfig):
        super().__init__()
        mult, n, L = c.vq_ch_mult, c.vq_num_res_blocks, len(c.vq_ch_mult)
        self.conv_in = nn.Conv2d(3, c.vq_ch, 3, 1, 1)
        self.conv_blocks, cin = nn.ModuleList(), c.vq_ch
        for i in range(L):
            cout = c.vq_ch * mult[i]
            res = [_Res(cin if j == 0 else cout, cout) for j in range(n)]
            attn = [_Attn2d(cout) for _ in range(n)] if i == L - 1 else []
            self.conv_blocks.append(_level(res, attn, _Down(cout) if i < L - 1 else None))
            cin = cout
        self.mid = nn.ModuleList([_Res(cin, cin), _Attn2d(cin), _Res(cin, cin)])
        self.norm_out, self.conv_out = _gn(cin), nn.Conv2d(cin, c.vq_z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for lvl in self.conv_blocks:
            h = _run_level(lvl, h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, c: DeepSeekRefConfig):
        super().__init__()
        mult, n, L = c.vq_ch_mult, c.vq_num_res_blocks + 1, len(c.vq_ch_mult)
        cin = c.vq_ch * mult[-1]
        self.conv_in = nn.Conv2d(c.vq_z_channels, cin, 3, 1, 1)
        self.mid = nn.ModuleList([_Res(cin, cin), _Attn2d(cin), _Res(cin, cin)])
        self.conv_blocks = nn.ModuleList()  # conv_blocks[0] is the lowest resolution
        for i in reversed(range(L)):
            cout = c.vq_ch * mult[i]
            res = [_Res(cin if j == 0 else cout, cout) for j in range(n)]
            attn = [_Attn2d(cout) for _ in range(n)] if i == L - 1 else []
            self.conv_blocks.append(_level(res, attn, _Up(cout) if i > 0 else None, "upsample"))
            cin = cout
        self.norm_out, self.conv_out = _gn(cin), nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for lvl in self.conv_blocks:
            h = _run_level(lvl, h)
        return self.conv_out(_swish(self.norm_out(h)))


class _VQ(nn.Module):
    def __init__(self, c: DeepSeekRefConfig):
        super().__init__()
        self.encoder, self.decoder = _Encoder(c), _Decoder(c)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(c.codebook_size, c.codebook_dim)
        self.quantize.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_LEN))
        self.quant_conv = nn.Conv2d(c.vq_z_channels, c.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.vq_z_channels, 1)


# ------------------------------------------------------------------------------- full model
class DeepSeekRefModel(nn.Module):
    def __init__(self, cfg: DeepSeekRefConfig | None = None, seed: int | None = 0):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.cfg = c = cfg or DeepSeekRefConfig()
        D = c.llm_hidden
        self.vision_model = nn.Module()  # CLIPVisionTower: only holds `vision_tower`, no normalisation
        self.vision_model.vision_tower = _SigLIP(c)
        self.aligner = _Projector(c.vision_width, c.aligner_dim or D)
        self.gen_vision_model = _VQ(c)
        self.gen_aligner = _Projector(c.codebook_dim, c.gen_aligner_dim or D)
        self.gen_head = _GenHead(D, c.gen_head_embed or D, c.codebook_size)
        self.gen_embed = nn.Embedding(c.codebook_size, c.codebook_dim)
        self.language_model = LlamaForCausalLM(LlamaConfig(**self.language_config()))
        if seed is not None:
            self.randomize(seed)
        self.eval()

    def language_config(self) -> dict:
        c = self.cfg
        return dict(hidden_size=c.llm_hidden, intermediate_size=c.llm_ffn, num_hidden_layers=c.llm_layers,
                    num_attention_heads=c.llm_heads, num_key_value_heads=c.llm_kv_heads, vocab_size=c.vocab_size,
                    rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False,
                    max_position_embeddings=c.max_position_embeddings, **c.extra_language_config)

    @torch.no_grad()
    def randomize(self, seed: int = 0) -> "DeepSeekRefModel":
        """Well-scaled seeded noise everywhere, so every output is informative. Codebook rows get
        very different norms, so the L2-normalised lookup differs from a plain nearest neighbour."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + (0.1 if name.endswith("weight") else 0.05)
                        * torch.randn(p.shape, generator=g))
        pe = self.vision_model.vision_tower.pos_embed
        pe.copy_(0.5 * torch.randn(pe.shape, generator=g))
        cb = self.gen_vision_model.quantize.embedding.weight
        cb.mul_(torch.exp(torch.randn(cb.shape[0], 1, generator=g)))
        self.gen_embed.weight.copy_(torch.randn(self.gen_embed.weight.shape, generator=g))
        return self

    # --- understanding path
    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, num_image_tokens, vision_width] (all blocks, final norm)."""
        return self.vision_model.vision_tower(pixels)

    def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask):
        """DeepSeek's scatter: pixel_values [b, n, 3, H, W], images_seq_mask [b, T],
        images_emb_mask [b, n, t]. Unlike DeepSeek it does not clamp `input_ids` in place."""
        b, n = pixel_values.shape[:2]
        img = self.aligner(self.vision_features(pixel_values.flatten(0, 1)))
        img = img.reshape(b, n * img.shape[1], img.shape[2])
        emb = self.language_model.get_input_embeddings()(input_ids.clamp(min=0))
        emb[images_seq_mask] = img[images_emb_mask.flatten(1)]
        return emb

    # --- generation path
    def prepare_gen_img_embeds(self, codes: torch.Tensor) -> torch.Tensor:
        return self.gen_aligner(self.gen_embed(codes))

    def llm_hidden(self, inputs_embeds, attention_mask=None) -> torch.Tensor:
        return self.language_model.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    def gen_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gen_head(hidden)

    # --- VQ tokenizer
    def vq_encode(self, pixels: torch.Tensor, l2: bool = True) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> codes [B, h*w] (row-major). `l2=False` is a plain Euclidean
        nearest neighbour (what transformers' JanusVQVAE.encode does), for contrast only."""
        vq = self.gen_vision_model
        z = vq.quant_conv(vq.encoder(pixels))
        b = z.shape[0]
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = vq.quantize.embedding.weight
        if l2:
            zf, e = F.normalize(zf, dim=-1), F.normalize(e, dim=-1)
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(1).view(b, -1)

    def vq_decode(self, codes: torch.Tensor, shape=None) -> torch.Tensor:
        """codes [B, h*w] (or flat) -> image [B, 3, H, W]; shape = [B, codebook_dim, h, w] as in
        DeepSeek's `decode_code` (defaults to the square grid)."""
        vq, c = self.gen_vision_model, self.cfg
        b = codes.shape[0] if codes.ndim == 2 else 1
        shape = shape or [b, c.codebook_dim, c.vq_grid, c.vq_grid]
        q = F.normalize(vq.quantize.embedding.weight, dim=-1)[codes.reshape(-1)]
        q = q.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()
        return vq.decoder(vq.post_quant_conv(q))


# ------------------------------------------------------------------------------- writer
def deepseek_config_dict(model: DeepSeekRefModel, torch_dtype: str = "float32") -> dict:
    """config.json as DeepSeek writes it (model_type "multi_modality"). Real presets are named
    exactly as in the hub. For other sizes the architecture is also recorded in `params`, because
    DeepSeek names only presets: SigLIP_MODEL_CONFIG's keys go into the vision params, and the VQ's
    ModelArgs-style keys into the gen_vision params. DeepSeek's own code ignores these extra keys."""
    c, D = model.cfg, model.cfg.llm_hidden
    vparams = {"image_size": c.image_size, "model_name": "siglip_large_patch16_384",
               "select_feature": "same", "select_layer": -1}
    if not c.is_real_siglip():
        vparams.update(model_name="siglip_tiny_test", width=c.vision_width, layers=c.vision_depth,
                       heads=c.vision_heads, patch_size=c.patch_size, mlp_ratio=c.mlp_ratio)
    gparams = {"image_token_size": c.codebook_size, "n_embed": c.codebook_dim}
    if not c.is_real_vq():
        gparams.update(ch=c.vq_ch, ch_mult=list(c.vq_ch_mult), z_channels=c.vq_z_channels,
                       num_res_blocks=c.vq_num_res_blocks, codebook_size=c.codebook_size,
                       codebook_embed_dim=c.codebook_dim)
    # like the hub files, leave out what equals LlamaConfig's defaults (DeepSeek relies on them)
    defaults = {"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}
    lang = {k: v for k, v in model.language_config().items() if defaults.get(k, object()) != v}
    lang.update(model_type="llama", torch_dtype=torch_dtype)

    def mlp(din, dout):
        return {"depth": 2, "input_dim": din, "n_embed": dout, "projector_type": "mlp_gelu"}

    return {
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": mlp(c.vision_width, c.aligner_dim or D)},
        "architectures": ["MultiModalityCausalLM"],
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": mlp(c.codebook_dim, c.gen_aligner_dim or D)},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": {
            "image_token_embed": c.gen_head_embed or D, "image_token_size": c.codebook_size, "n_embed": D}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": gparams},
        "language_config": dict(sorted(lang.items())),
        "model_type": "multi_modality",
        "torch_dtype": torch_dtype,
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": vparams},
    }


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_deepseek_checkpoint(model: DeepSeekRefModel, out_dir, tokenizer=None, *, shards: int = 1,
                              safetensors: bool = False, dtype: torch.dtype | None = None,
                              deepseek_tokenizer_files: bool = True) -> Path:
    """Write `model` as a DeepSeek hub directory and return its path. The directory holds
    config.json, the weights, preprocessor_config.json and processor_config.json, plus the
    tokenizer files when a tokenizer is given.

    Weights are written as `pytorch_model.bin` by default. `shards=N` (N > 1) writes
    `pytorch_model-0000k-of-0000N.bin` plus `pytorch_model.bin.index.json` instead, and
    `safetensors=True` writes `model.safetensors` (single file) or its sharded equivalent. `dtype`
    casts floating tensors (the hub files are bfloat16). With a tokenizer, `save_pretrained` runs
    first. Then, if `deepseek_tokenizer_files` is set, tokenizer_config.json and
    special_tokens_map.json are rewritten to DeepSeek's exact content. That content says
    tokenizer_class "LlamaTokenizer" and pad_token null, and names the pad only in
    special_tokens_map.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
          for k, v in model.state_dict().items()}
    dname = str(dtype or next(iter(sd.values())).dtype).replace("torch.", "")
    _dump(out / "config.json", deepseek_config_dict(model, dname))

    ext, stem = ("safetensors", "model") if safetensors else ("bin", "pytorch_model")

    def save(part: dict, name: str) -> None:
        if safetensors:
            from safetensors.torch import save_file

            save_file(part, str(out / name), metadata={"format": "pt"})
        else:
            torch.save(part, out / name)

    if shards <= 1:
        save(sd, f"{stem}.{ext}")
    else:
        keys = list(sd)
        per = math.ceil(len(keys) / shards)
        weight_map = {}
        for i in range(shards):
            name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
            part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
            save(part, name)
            weight_map.update(dict.fromkeys(part, name))
        total = sum(v.numel() * v.element_size() for v in sd.values())
        _dump(out / f"{stem}.{ext}.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})

    c = model.cfg
    _dump(out / "preprocessor_config.json", {
        "background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "VLMImageProcessor", "image_size": c.image_size, "image_std": [0.5, 0.5, 0.5],
        "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098})
    # Janus-Pro's real processor_config.json (210 bytes): no image_start/end_tag, no pad_tag keys
    _dump(out / "processor_config.json", {
        "add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>", "mask_prompt": True,
        "num_image_tokens": c.num_image_tokens, "processor_class": "VLChatProcessor", "sft_format": "deepseek"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        if deepseek_tokenizer_files:
            bos, eos = tokenizer.bos_token, tokenizer.eos_token
            _dump(out / "tokenizer_config.json", {
                "bos_token": bos, "clean_up_tokenization_spaces": False, "eos_token": eos, "model_max_length": 16384,
                "pad_token": None, "tokenizer_class": "LlamaTokenizer", "unk_token": None,
                "use_default_system_prompt": True})
            extra = [t for t in ("<image_placeholder>", "<patch_placeholder>", "<|ref|>", "<|/ref|>", "<|det|>",
                                 "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>") if t in tokenizer.get_vocab()]
            _dump(out / "special_tokens_map.json", {"additional_special_tokens": extra, "bos_token": bos,
                                                    "eos_token": eos, "pad_token": "<｜▁pad▁｜>"})
    return out


def config_from_dict(d: dict) -> DeepSeekRefConfig:
    """Inverse of `deepseek_config_dict` (for round-trip tests)."""
    v, g, lang = d["vision_config"]["params"], d["gen_vision_config"]["params"], d["language_config"]
    kw = dict(llm_layers=lang["num_hidden_layers"], llm_hidden=lang["hidden_size"], llm_heads=lang["num_attention_heads"],
              llm_kv_heads=lang["num_key_value_heads"], llm_ffn=lang["intermediate_size"], vocab_size=lang["vocab_size"],
              rms_norm_eps=lang.get("rms_norm_eps", 1e-6), rope_theta=lang.get("rope_theta", 10000.0))
    if d["gen_head_config"]["params"]["image_token_embed"] != lang["hidden_size"]:
        kw["gen_head_embed"] = d["gen_head_config"]["params"]["image_token_embed"]
    kw.update(SIGLIP_L if "width" not in v else dict(
        image_size=v["image_size"], vision_width=v["width"], vision_depth=v["layers"], vision_heads=v["heads"],
        patch_size=v["patch_size"], mlp_ratio=v["mlp_ratio"]))
    kw.update(VQ_16 if "ch" not in g else dict(
        vq_ch=g["ch"], vq_ch_mult=tuple(g["ch_mult"]), vq_z_channels=g["z_channels"],
        vq_num_res_blocks=g["num_res_blocks"], codebook_size=g["codebook_size"], codebook_dim=g["codebook_embed_dim"]))
    return DeepSeekRefConfig(**kw)


__all__ = ["DeepSeekRefConfig", "DeepSeekRefModel", "write_deepseek_checkpoint", "deepseek_config_dict",
           "config_from_dict", "SIGLIP_L", "VQ_16", "CODEBOOK_USED_LEN"]
