"""Stage 0b: pretrain the understanding encoder with SigLIP's sigmoid contrastive loss.

Janus-Pro's understanding encoder is SigLIP-L/16, pretrained by Google on WebLI. ShapesWorld trains
its own: transformers' `JanusVisionModel` (the class that sits in `JanusPro`'s `vision_model`, at
the `shapes` preset's size) against a small text tower over ShapesWorld's scene descriptions
("a red circle, a blue square and a green triangle", objects left to right, so the text also
carries layout).

As in SigLIP (Zhai et al. 2023): every image-text pair of the batch is an independent binary
problem, `loss = -1/n sum_ij log sigmoid(z_ij (t * <x_i, y_j> + b))` with z_ij = +1 for matching
pairs and -1 otherwise, a learnable temperature t = exp(t') and bias b, initialised t' = log 10,
b = -10. Scenes whose descriptions are identical (common for one-object scenes) are positives of
each other rather than false negatives.

The image embedding for the loss is the mean over patches of the last layer after the final
LayerNorm - the very features Janus feeds its aligner (no pooling head there) - through a linear
head that, like the text tower, is dropped afterwards: `export_state_dict(ckpt, "vision.")` gives
`JanusPro.vision`'s weights.

That loss needs no patch to say where it is, and the trained encoder forgets it (see
`lit_janus.shapes.probe`). Optionally (`locca_weight > 0`), as SigLIP 2 does with LocCa, a small
decoder also captions each image from its patch features with every object's grid cell
("red circle 0 2 , blue square 3 1"), which patch features can only serve if they keep positions.

`python main.py fit --config configs/shapes/stage0_siglip.yaml`
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lit_janus.config import Config
from lit_janus.shapes.vq_training import _total_steps, resolve_config, warmup_cosine


class WordTokenizer:
    """ShapesWorld's closed vocabulary as word ids (the text tower is thrown away after this stage,
    so it needs no BPE): 0 = pad, then `lit_janus.shapes.world.vocabulary()`."""

    def __init__(self):
        from lit_janus.shapes.world import vocabulary

        self.words = ["<pad>", *vocabulary()]
        self.ids = {w: i for i, w in enumerate(self.words)}
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.words)

    def __call__(self, texts: list[str], max_length: int = 32) -> torch.Tensor:
        from lit_janus.shapes.world import split_words

        rows = []
        for t in texts:
            row = self._cache.get(t)
            if row is None:
                words = split_words(t)
                unknown = [w for w in words if w not in self.ids]
                if unknown:
                    raise ValueError(f"words outside ShapesWorld's vocabulary: {unknown}")
                if len(self._cache) > 500_000:  # captions are combinatorial: bound the memory
                    self._cache.clear()
                row = self._cache[t] = [self.ids[w] for w in words]
            rows.append(row[:max_length])
        # one tensor from padded lists: a tensor per row cost ~10 us each, ~1024 rows per SigLIP step,
        # all in the training process
        width = max(1, max(len(r) for r in rows))
        return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)


class TextTower(nn.Module):
    """A small bidirectional transformer over word ids, mean-pooled over non-pad positions."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4, max_length: int = 32,
                 embed_dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1).clamp_min(1))


class GroundedCaptioner(nn.Module):
    """A small causal text decoder that cross-attends to the patch features and writes the scene's
    objects with their grid cells ('red circle 0 2 , blue square 3 1'): a LocCa-style objective
    (SigLIP 2 adds LocCa's location-aware captioning to SigLIP's loss for its dense features). The
    mean-pooled contrastive loss alone needs no patch to say where it is, and the trained encoder
    indeed forgets it (`python -m lit_janus.shapes.probe`)."""

    def __init__(self, vocab_size: int, vision_width: int, width: int = 128, layers: int = 1, heads: int = 4,
                 max_length: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.pos, std=0.02)
        self.memory = nn.Linear(vision_width, width)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def loss(self, patches: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-word cross-entropy of `ids` [B, T] (0 = pad; word 0 of each row is predicted from a
        start position that sees only the image)."""
        T = ids.shape[1]
        inputs = F.pad(ids[:, :-1], (1, 0))  # a pad id in front serves as the start token
        x = self.embed(inputs) + self.pos[:T]
        causal = torch.triu(torch.full((T, T), float("-inf"), device=ids.device), 1)
        x = self.norm(self.decoder(x, self.memory(patches), tgt_mask=causal))
        return F.cross_entropy(self.head(x).flatten(0, 1), ids.flatten(), ignore_index=0)


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, t_prime: torch.Tensor, bias: torch.Tensor,
                 positives: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's pairwise sigmoid loss on L2-normalised embeddings, images [n, d] against texts [m, d];
    `positives` [n, m] bool (default: the diagonal, m = n). Returns (loss, logits)."""
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t() * t_prime.exp() + bias
    if positives is None:
        positives = torch.eye(len(img), dtype=torch.bool, device=img.device)
    labels = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / len(img), logits


class SigLIPModule(L.LightningModule):
    """Stage 0b: `JanusVisionModel` + a small text tower trained with the sigmoid contrastive loss."""

    def __init__(
        self,
        config: str | Config = "shapes",
        overrides: dict | None = None,
        embed_dim: int = 128,
        text_width: int = 128,
        text_layers: int = 2,
        text_heads: int = 4,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 1e-4,
        warmup_steps: int = 20,
        t_prime_init: float = math.log(10.0),
        bias_init: float = -10.0,
        final_lr_fraction: float = 0.1,
        locca_weight: float = 0.0,
        locca_layers: int = 1,
    ):
        """
        Args:
            config: model shapes (a preset name or a Config); only the vision_* / patch_size / image_size fields matter.
            overrides: Config fields to change on top of `config` (e.g. a smaller image_size for tests).
            embed_dim: width of the shared embedding space of the contrastive heads.
            text_width: text tower width.
            text_layers: text tower transformer layers.
            text_heads: text tower attention heads.
            lr: AdamW learning rate.
            betas: AdamW betas.
            weight_decay: AdamW weight decay.
            warmup_steps: linear LR warm-up steps.
            t_prime_init: initial log-temperature t' (SigLIP: log 10).
            bias_init: initial bias b (SigLIP: -10).
            final_lr_fraction: cosine-decay the LR after warm-up to this fraction of `lr` at max_steps (1: constant).
            locca_weight: > 0 adds a `GroundedCaptioner` on the patch features, its loss weighted by
                this (needs `ShapesImageDataModule(grounded=True)`). Dropped after this stage.
            locca_layers: decoder layers of that captioner.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["config"])
        self.config = resolve_config(config, overrides)
        self.hparams["config"] = self.config.asdict()
        from transformers import JanusVisionModel

        self.vision = JanusVisionModel(self.config.to_hf().vision_config)
        self.vision.train()
        self.image_head = nn.Linear(self.config.vision_width, embed_dim)
        self.tokenizer = WordTokenizer()
        self.text = TextTower(len(self.tokenizer), text_width, text_layers, text_heads, embed_dim=embed_dim)
        if locca_weight < 0:
            raise ValueError(f"locca_weight must be >= 0, got {locca_weight}")
        self.captioner = (GroundedCaptioner(len(self.tokenizer), self.config.vision_width, text_width, locca_layers,
                                            text_heads) if locca_weight > 0 else None)
        self.t_prime = nn.Parameter(torch.tensor(float(t_prime_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What Janus's aligner sees: last layer after the final LayerNorm, [B, tokens, width]."""
        return self.vision(pixels).last_hidden_state

    def image_embedding(self, patches: torch.Tensor) -> torch.Tensor:
        """The contrastive embedding of `image_features` output: mean over patches, then the head."""
        return self.image_head(patches.mean(1))

    def setup(self, stage: str) -> None:
        # the grounded captions sit between the caption and the negatives in each batch: a mismatch
        # would silently train on them as negatives, or on the first negatives as grounded captions
        hparams = getattr(self.trainer.datamodule, "hparams", {})
        if "grounded" in hparams and bool(hparams["grounded"]) != (self.captioner is not None):
            raise ValueError(f"SigLIPModule(locca_weight={self.hparams.locca_weight}) and "
                             f"ShapesImageDataModule(grounded={hparams['grounded']}) disagree: set both or neither")

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text(self.tokenizer(texts).to(self.device))

    def step(self, batch, split: str) -> torch.Tensor:
        pixels, texts, *negatives = batch  # negatives: k lists of hard-negative captions
        grounded = negatives.pop(0) if self.captioner is not None else None
        texts = list(texts)
        columns = texts + [t for group in negatives for t in group]
        patches = self.image_features(pixels)
        img, txt = self.image_embedding(patches), self.encode_texts(columns)
        # which columns describe each image: equal captions get equal ids (a Python loop over the
        # n x 4n pairs cost ~40 ms a step at n = 256)
        ids: dict[str, int] = {}
        column_ids = torch.tensor([ids.setdefault(t, len(ids)) for t in columns], device=img.device)
        same = column_ids[: len(texts), None] == column_ids[None, :]
        loss, logits = sigmoid_loss(img, txt, self.t_prime, self.bias, same)
        total = loss
        if grounded is not None:
            locca = self.captioner.loss(patches, self.tokenizer(list(grounded)).to(self.device))
            self.log(f"{split}/locca_loss", locca, on_step=split == "train", on_epoch=split != "train",
                     batch_size=len(texts))
            total = loss + self.hparams.locca_weight * locca
        # retrieval: the best-scoring text of each image (hard negatives included) is a true description
        n = len(texts)
        i2t = same[torch.arange(n), logits.argmax(1)].float().mean()
        t2i = same[logits[:, :n].argmax(0), torch.arange(n)].float().mean()
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=n)
        self.log(f"{split}/i2t_acc", i2t, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=n)
        self.log(f"{split}/t2i_acc", t2i, on_step=on_step, on_epoch=not on_step, batch_size=n)
        if on_step:
            self.log_dict({"train/temperature": self.t_prime.exp().detach(), "train/bias": self.bias.detach()},
                          on_step=True, on_epoch=False)
        return total

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def configure_optimizers(self):
        h = self.hparams
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas))
        sched = warmup_cosine(opt, h.warmup_steps, _total_steps(self), h.final_lr_fraction)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lit_janus_stage0"] = {"part": "vision", "config": self.config.asdict()}


__all__ = ["GroundedCaptioner", "SigLIPModule", "TextTower", "WordTokenizer", "sigmoid_loss"]
