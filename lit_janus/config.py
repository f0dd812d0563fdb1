"""Model shapes: one flat dataclass, named presets, and the translation to transformers' JanusConfig.

Flat (litgpt-style) so that every field can be overridden from the CLI as
`--model.init_args.config.n_layer 4`, and so that a reader sees the whole architecture at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class Config:
    """Shapes of a Janus-Pro model (LLM + SigLIP understanding encoder + VQ generation tokenizer)."""

    name: str = "custom"
    """Preset name, for logs only."""
    # --- language model (Llama architecture, DeepSeek-LLM) ---
    n_layer: int = 24
    """Number of decoder layers."""
    n_embd: int = 2048
    """Hidden size D of the LLM; also the width of both aligners and of the generation head."""
    n_head: int = 16
    """Attention heads."""
    n_query_groups: int = 16
    """Key/value heads (Janus-Pro uses plain multi-head attention: equal to n_head)."""
    intermediate_size: int = 5632
    """SwiGLU FFN width."""
    vocab_size: int = 102400
    """Text vocabulary (rows of embed_tokens and lm_head)."""
    max_position_embeddings: int = 16384
    """RoPE table length in the checkpoint's config; training context is set by the data (4096)."""
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # --- understanding encoder (SigLIP ViT, last layer after the final LayerNorm, no pooling head) ---
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 384
    """Side of the (square) image for both pathways."""
    # --- generation tokenizer (LlamaGen VQ-16) ---
    codebook_size: int = 16384
    codebook_dim: int = 8
    vq_base_channels: int = 128
    vq_channel_multiplier: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    vq_num_res_blocks: int = 2
    vq_latent_channels: int = 256
    # --- token ids that the model itself needs (all others live in the processor) ---
    image_token_id: int = 100581
    """Id of `<image_placeholder>`; always overwritten from the tokenizer when a checkpoint is loaded."""
    # --- ablation ---
    und_encoder: str = "siglip"
    """Which encoder feeds understanding: `siglip` (Janus' decoupled encoders) or `vq`, one encoder
    shared by both tasks (Janus Table 5, exp. A): the image's VQ codes enter through the generation
    adaptor, as generated images do (JanusModule then freezes the unused SigLIP and aligner). Stored in
    config.json as `lit_janus_und_encoder`, which
    transformers ignores: only lit_janus runs a `vq` model correctly."""

    def __post_init__(self) -> None:
        self.vq_channel_multiplier = list(self.vq_channel_multiplier)
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_query_groups:
            problems.append(f"n_head={self.n_head} is not divisible by n_query_groups={self.n_query_groups}")
        if self.vision_width % self.vision_heads:
            problems.append(f"vision_width={self.vision_width} is not divisible by vision_heads={self.vision_heads}")
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        # transformers' Janus classes use one grid for both pathways (vq num_patches = image/patch),
        # so the VQ's downsampling factor must equal the ViT patch size.
        if self.vq_downsample != self.patch_size:
            problems.append(
                f"the VQ downsamples by {self.vq_downsample} (2**(len(vq_channel_multiplier)-1)) but "
                f"patch_size={self.patch_size}: both pathways must see the same token grid"
            )
        if self.und_encoder not in ("siglip", "vq"):
            problems.append(f"und_encoder={self.und_encoder!r}: choose siglip (decoupled) or vq (shared)")
        if self.vq_base_channels % 32:
            problems.append(f"vq_base_channels={self.vq_base_channels} must be a multiple of 32 (GroupNorm(32))")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def vq_downsample(self) -> int:
        return 2 ** (len(self.vq_channel_multiplier) - 1)

    @property
    def grid_size(self) -> int:
        """Tokens per image side: 24 for 384 px with patch 16."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image in both pathways (576 for Janus-Pro)."""
        return self.grid_size**2

    @classmethod
    def from_name(cls, preset: str, /, **overrides: Any) -> "Config":
        """A preset's shapes with `overrides` (any field, `name` included) replaced."""
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[preset], **overrides)

    def to_hf(self, torch_dtype: str = "float32") -> "transformers.JanusConfig":  # noqa: F821
        """The equivalent transformers `JanusConfig`, with untied embeddings (Janus-Pro's are untied:
        transformers' JanusConfig defaults to tied, which silently changes every logit)."""
        from transformers import JanusConfig, LlamaConfig

        text = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.n_embd,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_query_groups,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            tie_word_embeddings=False,
            dtype=torch_dtype,
        )
        vision = dict(
            hidden_size=self.vision_width,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            mlp_ratio=self.vision_mlp_ratio,
            patch_size=self.patch_size,
            image_size=self.image_size,
            projection_dim=self.n_embd,
            num_image_tokens=self.num_image_tokens,
        )
        vq = dict(
            embed_dim=self.codebook_dim,
            num_embeddings=self.codebook_size,
            latent_channels=self.vq_latent_channels,
            base_channels=self.vq_base_channels,
            channel_multiplier=list(self.vq_channel_multiplier),
            num_res_blocks=self.vq_num_res_blocks,
            projection_dim=self.n_embd,
            image_token_embed_dim=self.n_embd,
        )
        return JanusConfig(
            text_config=text.to_dict(),
            vision_config=vision,
            vq_config=vq,
            image_token_id=self.image_token_id,
            tie_word_embeddings=False,
            **({} if self.und_encoder == "siglip" else {"lit_janus_und_encoder": self.und_encoder}),
        )

    @classmethod
    def from_hf(cls, hf: Any, name: str = "custom") -> "Config":
        """Inverse of `to_hf` (accepts a JanusConfig or its dict)."""
        d = hf if isinstance(hf, dict) else hf.to_dict()
        try:
            return cls._from_hf_dict(d, name)
        except KeyError as e:  # a hand-edited or foreign config.json: say which field is missing
            raise ValueError(f"transformers Janus config lacks the field {e.args[0]!r} (in text_config, "
                             "vision_config or vq_config; transformers writes them all)") from None

    @classmethod
    def _from_hf_dict(cls, d: dict, name: str) -> "Config":
        t, v, q = d["text_config"], d["vision_config"], d["vq_config"]
        if d.get("tie_word_embeddings") or t.get("tie_word_embeddings"):
            raise ValueError(
                "this transformers Janus config ties lm_head to embed_tokens; Janus-Pro's are untied. "
                "Set tie_word_embeddings=false in config.json (and text_config) if the weights are untied."
            )
        rope = t.get("rope_parameters") or {}
        return cls(
            name=name,
            n_layer=t["num_hidden_layers"],
            n_embd=t["hidden_size"],
            n_head=t["num_attention_heads"],
            n_query_groups=t.get("num_key_value_heads") or t["num_attention_heads"],
            intermediate_size=t["intermediate_size"],
            vocab_size=t["vocab_size"],
            max_position_embeddings=t.get("max_position_embeddings", 16384),
            rope_theta=rope.get("rope_theta", t.get("rope_theta", 10000.0)),
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            vision_width=v["hidden_size"],
            vision_layers=v["num_hidden_layers"],
            vision_heads=v["num_attention_heads"],
            vision_mlp_ratio=v.get("mlp_ratio", 4.0),
            patch_size=v["patch_size"],
            image_size=v["image_size"],
            codebook_size=q["num_embeddings"],
            codebook_dim=q["embed_dim"],
            vq_base_channels=q["base_channels"],
            vq_channel_multiplier=list(q["channel_multiplier"]),
            vq_num_res_blocks=q["num_res_blocks"],
            vq_latent_channels=q["latent_channels"],
            image_token_id=d.get("image_token_id", 100581),
            und_encoder=d.get("lit_janus_und_encoder", "siglip"),
        )

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Config] = {
    # Janus-Pro-1B: DeepSeek-LLM-1.5B base (24 x 2048, 16 heads, FFN 5632), SigLIP-L/16@384, VQ-16.
    "janus-pro-1b": Config(name="janus-pro-1b"),
    # Janus-Pro-7B: DeepSeek-LLM-7B base (30 x 4096, 32 heads, FFN 11008). Its tokenizer's special
    # token ids differ from the 1B's; they are always read from the tokenizer.
    "janus-pro-7b": Config(
        name="janus-pro-7b", n_layer=30, n_embd=4096, n_head=32, n_query_groups=32, intermediate_size=11008
    ),
    # Unit-test size: every code path, milliseconds per step. 32 px, 4x4 grid = 16 image tokens.
    "tiny": Config(
        name="tiny", n_layer=2, n_embd=64, n_head=4, n_query_groups=4, intermediate_size=128, vocab_size=512,
        max_position_embeddings=512, vision_width=32, vision_layers=2, vision_heads=2, patch_size=8,
        image_size=32, codebook_size=64, codebook_dim=8, vq_base_channels=32,
        vq_channel_multiplier=[1, 1, 2, 2], vq_num_res_blocks=1, vq_latent_channels=32,
    ),
    # ShapesWorld reproduction: 64 px images, 8x8 grid = 64 image tokens; trains on a laptop CPU.
    "shapes": Config(
        name="shapes", n_layer=4, n_embd=256, n_head=4, n_query_groups=4, intermediate_size=688, vocab_size=1024,
        max_position_embeddings=1024, vision_width=128, vision_layers=3, vision_heads=4, patch_size=8,
        image_size=64, codebook_size=256, codebook_dim=8, vq_base_channels=32,
        vq_channel_multiplier=[1, 1, 2, 2], vq_num_res_blocks=1, vq_latent_channels=32,
    ),
}
