"""The unified Janus-Pro network: transformers' Janus classes plus the training forward they lack.

`JanusPro` is a plain `nn.Module` whose single `forward(batch)` computes everything a training
step needs (understanding, text and generation cross-entropies, token counts, accuracies), so that
FSDP2 sees one root module. The weights live in `self.janus`, a
`transformers.JanusForConditionalGeneration`, so `janus.save_pretrained()` is transformers' layout.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from lit_janus.attention import VARLEN, document_offsets, register_varlen_attention, use_autocast_flex_attention
from lit_janus.batch import IGNORE, TASK_ID, TASKS
from lit_janus.config import Config
from lit_janus.losses import linear_cross_entropy
from lit_janus.vq import vq_decode, vq_encode


class JanusPro(nn.Module):
    def __init__(self, config: Config, attn_implementation: str = "sdpa", janus=None):
        super().__init__()
        from transformers import JanusForConditionalGeneration

        self.config = config
        if attn_implementation == "flex_attention":
            use_autocast_flex_attention()
        elif attn_implementation == VARLEN:
            register_varlen_attention()
        if janus is None:
            hf = config.to_hf()
            # flex and varlen attention matter only in the LLM (packed documents, lit_janus.attention);
            # transformers' Janus wrapper and SigLIP do not accept them
            outer = "sdpa" if attn_implementation in ("flex_attention", VARLEN) else attn_implementation
            hf._attn_implementation = outer
            hf.text_config._attn_implementation = attn_implementation
            hf.vision_config._attn_implementation = outer
            janus = JanusForConditionalGeneration(hf)
        if janus.lm_head.weight is janus.model.language_model.embed_tokens.weight:
            raise ValueError("lm_head is tied to embed_tokens; Janus-Pro's are untied")
        self.janus = janus

    # Short names for the parts (properties, so nothing is registered twice in the state dict).
    @property
    def llm(self) -> nn.Module:
        return self.janus.model.language_model

    @property
    def vision(self) -> nn.Module:
        return self.janus.model.vision_model

    @property
    def aligner(self) -> nn.Module:
        return self.janus.model.aligner

    @property
    def vq(self) -> nn.Module:
        return self.janus.model.vqmodel

    @property
    def gen_embed(self) -> nn.Module:
        return self.janus.model.generation_embeddings

    @property
    def gen_aligner(self) -> nn.Module:
        return self.janus.model.generation_aligner

    @property
    def gen_head(self) -> nn.Module:
        return self.janus.model.generation_head

    @property
    def lm_head(self) -> nn.Module:
        return self.janus.lm_head

    # ---- the pieces -----------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SigLIP last layer after the final LayerNorm (no pooling), then the aligner: [N, 576, D].

        With `config.und_encoder == "vq"` (the shared-encoder ablation) the image is VQ-encoded and
        its codes embedded like generated ones; the pixels go to the VQ as they are, which is its
        [-1, 1] input when the processor normalises with mean = std = 0.5 (Janus-Pro, ShapesWorld;
        JanusModule checks)."""
        if self.config.und_encoder == "vq":
            return self.code_embeddings(self.encode_images(pixel_values))
        return self.aligner(self.vision(pixel_values).last_hidden_state)

    def code_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """How a VQ code enters the LLM: gen_aligner(gen_embed(code)) (not the VQ codebook)."""
        return self.gen_aligner(self.gen_embed(codes))

    def input_embeddings(
        self, input_ids: torch.Tensor, gen_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with image features and code embeddings written in out-of-place
        (FSDP2 warns about in-place writes into a sharded module's output)."""
        text_ids = input_ids if gen_mask is None else input_ids.masked_fill(gen_mask, 0)
        embeds = self.llm.embed_tokens(text_ids)
        if gen_mask is not None and gen_mask.any():
            codes = self.code_embeddings(input_ids[gen_mask]).to(embeds.dtype)
            embeds = embeds.masked_scatter(gen_mask[..., None], codes)
        if pixel_values is not None:
            feats = self.image_features(pixel_values.to(embeds.dtype))
            n_slots = int(image_mask.sum()) if image_mask is not None else 0
            if n_slots != feats.shape[0] * feats.shape[1]:
                raise ValueError(
                    f"{feats.shape[0]} images give {feats.shape[0] * feats.shape[1]} features but the batch "
                    f"has {n_slots} image placeholder positions"
                )
            embeds = embeds.masked_scatter(image_mask[..., None], feats.to(embeds.dtype))
        return embeds

    def hidden_states(self, inputs_embeds, position_ids=None, attention_mask=None) -> torch.Tensor:
        kw = {}
        if self.llm.config._attn_implementation == VARLEN:
            if attention_mask is not None:  # transformers would drop it silently for this backend
                raise ValueError("varlen_attention finds documents in the position ids and takes no attention mask: "
                                 "pack the rows (collate) or use attn_implementation sdpa")
            if position_ids is not None:
                # the documents, found once per forward instead of once per layer (lit_janus.attention)
                offsets, T = document_offsets(position_ids), position_ids.shape[1]
                kw = dict(cu_seq_lens_q=offsets, cu_seq_lens_k=offsets, max_length_q=T, max_length_k=T)
        return self.llm(
            inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=attention_mask, use_cache=False, **kw
        ).last_hidden_state

    # ---- training forward -------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task mean cross-entropies (`und_loss`, `text_loss`, `gen_loss`; 0 when a task is
        absent), target-token counts (`*_tokens`) and correct-prediction counts (`*_correct`).

        Logits are computed only at supervised positions: the 102400-wide text logits of prompt
        and image positions would be most of the activation memory and all of it wasted."""
        self.check_codes(batch["gen_labels"])
        embeds = self.input_embeddings(
            batch["input_ids"], batch.get("gen_mask"), batch.get("image_mask"), batch.get("pixel_values")
        )
        h = self.hidden_states(embeds, batch.get("position_ids"))
        out: dict[str, torch.Tensor] = {}
        zero = h.sum() * 0.0  # keeps the graph connected when a task is absent

        text_sel = batch["text_labels"] != IGNORE
        task = None
        if text_sel.any():
            # chunked: the [n_text, 102400] fp32 logits never exist at once (lit_janus.losses)
            target = batch["text_labels"][text_sel]
            losses, correct = linear_cross_entropy(h[text_sel], self.lm_head.weight, self.lm_head.bias, target)
            task = batch["task_ids"][text_sel]
        for name in ("und", "text"):
            sel = None if task is None else task == TASK_ID[name]
            n = torch.zeros((), device=h.device, dtype=torch.long) if sel is None else sel.sum()
            out[f"{name}_tokens"] = n
            if sel is not None and int(n):
                out[f"{name}_loss"] = losses[sel].mean()
                out[f"{name}_correct"] = correct[sel].sum()
            else:
                out[f"{name}_loss"] = zero
                out[f"{name}_correct"] = torch.zeros_like(n)

        gen_sel = batch["gen_labels"] != IGNORE
        out["gen_tokens"] = gen_sel.sum()
        if gen_sel.any():
            head = self.gen_head  # proj_out -> activation -> vision_head; the last one chunked
            x = head.activation_fn(head.proj_out(h[gen_sel]))
            target = batch["gen_labels"][gen_sel]
            losses, correct = linear_cross_entropy(x, head.vision_head.weight, head.vision_head.bias, target)
            out["gen_loss"] = losses.mean()
            out["gen_correct"] = correct.sum()
        else:
            out["gen_loss"] = zero
            out["gen_correct"] = torch.zeros_like(out["gen_tokens"])
        return out

    def check_codes(self, gen_labels: torch.Tensor) -> None:
        """Raise ValueError for a VQ code outside the codebook (pre-extracted codes of another VQ).

        On a GPU such a code is a device-side assert in gen_embed or the loss, which names nothing
        and poisons the CUDA context, but checking costs a host sync every step. So it runs on CPU,
        and on a GPU only under CUDA_LAUNCH_BLOCKING=1 (what that assert's message suggests, and
        already synchronous). The data side rejects negative codes; only the model knows the size."""
        if gen_labels.device.type != "cpu" and os.environ.get("CUDA_LAUNCH_BLOCKING") != "1":
            return
        codes = gen_labels[gen_labels != IGNORE]  # every code of a t2i sample is a target
        if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < self.config.codebook_size:
            raise ValueError(
                f"VQ codes {int(codes.min())}..{int(codes.max())} in the batch, but the codebook has "
                f"{self.config.codebook_size} codes (0..{self.config.codebook_size - 1}): pre-extracted codes "
                "must come from this model's VQ (configs/predict/extract_codes.yaml)"
            )

    # ---- inference helpers ------------------------------------------------------------------
    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def gen_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gen_head(hidden)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> VQ codes [B, grid*grid] with DeepSeek's L2-normalised lookup.

        In the VQ's own dtype with autocast off: codes are argmins, and a bf16-autocast encoder moves a
        few percent of them, so on-the-fly training targets would differ from the float32 codes that
        `extract_codes` writes and evaluation uses. (Under FSDP2 the VQ is gathered in float32.)"""
        with self.vq_gathered(), torch.autocast(pixels.device.type, enabled=False):
            return vq_encode(self.vq, pixels)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """VQ codes [B, grid*grid] -> pixels in [-1, 1], [B, 3, S, S]."""
        with self.vq_gathered():
            return vq_decode(self.vq, codes)

    @contextlib.contextmanager
    def vq_gathered(self):
        """Under FSDP2 the frozen VQ is its own unit, gathered in float32 (lit_janus.sharding), and used
        outside any forward (on-the-fly tokenisation, sampling): gather it here, explicitly. The gather is a
        collective: every rank must enter this together (`JanusModule._prepare` makes ranks without
        images to encode join the others)."""
        if not hasattr(self.vq, "unshard"):
            yield
            return
        self.vq.unshard()
        try:
            yield
        finally:
            self.vq.reshard()


__all__ = ["JanusPro", "TASKS"]
