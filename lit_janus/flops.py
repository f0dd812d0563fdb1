"""Model FLOPs of a training step, for tokens/s -> MFU.

Convention (PaLM's "model FLOPs", whatever is frozen or recomputed): 6 FLOPs per parameter per
token a matmul parameter is applied to, plus attention. Each part counts only where it applies:
- LLM decoder layers: every real (non-pad) token;
- lm_head: text positions that are supervised (we never compute the other logits);
- gen_head: supervised image-code positions; gen_embed/gen_aligner: code input positions;
- SigLIP + aligner: its patch tokens (num_image_tokens per understanding image);
- causal attention: 6 * n_layer * n_embd * sum over documents of L_doc^2 (QK^T and AV, fwd+bwd,
  causal half), which depends on packing, so it is computed from the batch's position ids.
The frozen VQ encoder (on-the-fly tokenisation) and embedding look-ups are not counted.
"""

from __future__ import annotations

import torch

from lit_janus.batch import IGNORE
from lit_janus.config import Config

# dense bf16 peak per GPU (no sparsity)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def part_params(c: Config) -> dict[str, int]:
    """Matmul parameters per token of each part (biases included, norms and embeddings not)."""
    D, F, L = c.n_embd, c.intermediate_size, c.n_layer
    kv = D // c.n_head * c.n_query_groups
    W, Lv = c.vision_width, c.vision_layers
    vit_mlp = int(W * c.vision_mlp_ratio)
    return {
        "llm": L * (D * D * 2 + 2 * D * kv + 3 * D * F),
        "lm_head": D * c.vocab_size,
        "gen_head": D * D + D + D * c.codebook_size + c.codebook_size,
        "gen_aligner": c.codebook_dim * D + D + D * D + D,
        "vision": Lv * (4 * W * W + 4 * W + 2 * W * vit_mlp + vit_mlp + W) + 3 * c.patch_size**2 * W,
        "aligner": W * D + D + D * D + D,
    }


def attention_token_pairs(position_ids: torch.Tensor, real: torch.Tensor) -> int:
    """Sum over documents of L_doc^2 (documents start where position ids restart at 0; pads excluded)."""
    B, T = position_ids.shape
    doc = (position_ids == 0).long().cumsum(1) + torch.arange(B, device=position_ids.device)[:, None] * (T + 1)
    lengths = torch.bincount(doc[real].flatten())
    return int((lengths.double() ** 2).sum())


def step_flops(c: Config, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs (forward + backward) of one training step on `batch` (a collated batch)."""
    p = part_params(c)
    real = batch["task_ids"] > 0
    n_tokens = int(real.sum())
    n_text = int((batch["text_labels"] != IGNORE).sum())
    n_gen = int((batch["gen_labels"] != IGNORE).sum())
    n_codes = int(batch["gen_mask"].sum())
    n_patches = int(batch["pixel_values"].shape[0]) * c.num_image_tokens if "pixel_values" in batch else 0
    matmul = (p["llm"] * n_tokens + p["lm_head"] * n_text + p["gen_head"] * n_gen
              + p["gen_aligner"] * n_codes + (p["vision"] + p["aligner"]) * n_patches)
    attention = c.n_layer * c.n_embd * attention_token_pairs(batch["position_ids"], real)
    return 6.0 * (matmul + attention)


def peak_flops(device: torch.device | None = None) -> float | None:
    """bf16 peak of the local GPU if it is a known model, else None (no MFU is logged then)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
