"""Stage 0a: train the VQ image tokenizer from scratch on ShapesWorld images.

Janus-Pro uses LlamaGen's VQ-16 tokenizer, trained by others on real images. ShapesWorld has none,
so this stage trains one: transformers' `JanusVQVAE` (the very class that sits in `JanusPro`'s
`vqmodel`, at the `shapes` preset's size) with LlamaGen's quantizer:

- the encoder output and the codebook are **L2-normalised** before the nearest-code search
  (cosine similarity, `lit_janus.vq.l2_nearest_code`: the lookup DeepSeek's tokenizer uses, and the
  one `lit_janus.vq.vq_encode` applies at training time of the later stages);
- codebook loss `|sg(z) - e|^2` + commitment loss `beta |z - sg(e)|^2` on the normalised vectors,
  straight-through estimator from the decoder back to the encoder;
- reconstruction loss L1 + L2 (LlamaGen adds a perceptual and a GAN loss; flat shapes need neither);
- codebook usage and perplexity logged; codes unused for `restart_every` steps are restarted on
  encoder outputs of the current batch drawn in proportion to their quantisation error (dead-code
  restart), so usage stays high without piling codes onto the background;
- optionally trained on random crops on the token grid (`ShapesImageDataModule(crop=32)`): the
  tokenizer is convolutional, a 32 px crop costs a quarter of a 64 px image; validation sees whole images.

The decoder sees exactly what `JanusVQVAE.decode` feeds it at inference (normalised codebook
entries through `post_quant_conv`), so the trained weights drop into `JanusPro.vq` unchanged:
`export_state_dict(checkpoint)` gives them with `JanusVQVAE`'s keys.

Run it through the project CLI: `python main.py fit --config configs/shapes/stage0_vq.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lit_janus.config import Config


def resolve_config(config: str | Config, overrides: dict | None = None) -> Config:
    """A preset name or Config, with field overrides."""
    import dataclasses

    if isinstance(config, str):
        return Config.from_name(config, **(overrides or {}))
    return dataclasses.replace(config, **(overrides or {}))


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int | None, final_fraction: float = 0.1):
    """Linear warm-up, then cosine decay to `final_fraction` of the LR at `total_steps` (constant after
    warm-up when `total_steps` is unknown or `final_fraction` is 1). The stage-0 schedule (the
    encoders are not part of Janus-Pro's recipe): Stages I-III's `WarmupConstantLR` with its cool-down
    starting where the warm-up ends."""
    from lit_janus.module import WarmupConstantLR

    if not total_steps or total_steps <= warmup_steps or final_fraction >= 1:
        return WarmupConstantLR(optimizer, warmup_steps)
    return WarmupConstantLR(optimizer, warmup_steps, decay_start=warmup_steps, decay_steps=total_steps - warmup_steps,
                            final_fraction=final_fraction)


def _total_steps(module) -> int | None:
    trainer = module._trainer
    steps = getattr(trainer, "max_steps", -1) if trainer is not None else -1
    return steps if steps and steps > 0 else None


# ---------------------------------------------------------------------------------------------
# data: rendered ShapesWorld scenes as pixels in [-1, 1]
# ---------------------------------------------------------------------------------------------
def image_to_pixels(image) -> torch.Tensor:
    """PIL RGB image -> [3, S, S] float in [-1, 1]: the generation preprocessing
    (`lit_janus.processor.generation_pixels`) for an image that already has the model's size."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return x.float() / 127.5 - 1.0


class ShapesImages(Dataset):
    """Rendered ShapesWorld scenes (pixels in [-1, 1]), a pure function of (seed, index).

    `kind`: `scenes` (random 1-4 object scenes over all 18 colour-shape combos, as in understanding
    data), `t2i` (train-split generation targets) or `mixed` (alternating). With `captions=True`
    an item is `(pixels, description)`, the description being ShapesWorld's canonical short one
    ("a red circle and a blue square", objects left to right) - SigLIP's text side - followed by
    `hard_negatives` descriptions of the scene with one object's shape or colour changed. With
    `grounded=True` the description is followed by `grounded_caption` (objects with their grid cells,
    the target of SigLIP's optional location-aware captioner) before the negatives."""

    def __init__(self, length: int = 100_000, seed: int = 0, image_size: int = 64, kind: str = "mixed",
                 captions: bool = False, crop: int | None = None, crop_align: int = 8, hard_negatives: int = 0,
                 grounded: bool = False):
        from lit_janus.shapes.world import ShapesWorld

        if kind not in ("scenes", "t2i", "mixed"):
            raise ValueError(f"kind must be scenes, t2i or mixed, not {kind!r}")
        if crop is not None and (crop > image_size or crop % crop_align or image_size % crop_align):
            raise ValueError(f"crop {crop} must be <= image_size {image_size}, both multiples of crop_align {crop_align}")
        if hard_negatives and not captions:
            raise ValueError("hard_negatives are captions: set captions=True")
        self.length, self.seed, self.kind, self.captions = length, seed, kind, captions
        if grounded and not captions:
            raise ValueError("grounded captions are captions: set captions=True")
        self.hard_negatives, self.grounded = hard_negatives, grounded
        self.crop, self.crop_align = crop, crop_align
        self.world = ShapesWorld(seed=seed, image_size=image_size)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int):
        from lit_janus.shapes.world import random_scene, stable_rng

        if self.kind == "t2i" or (self.kind == "mixed" and index % 2):
            return self.world.t2i_scene(index)[2]
        return random_scene(stable_rng(self.seed, "vq-scene", index))

    def __getitem__(self, index: int):
        from lit_janus.shapes.world import describe

        scene = self.scene(index)
        pixels = image_to_pixels(self.world.render(scene))
        if self.crop is not None and self.crop < pixels.shape[-1]:
            # a random crop on the token grid: the same patch alignment as full images, a quarter of
            # the convolution cost at half the side (the tokenizer is fully convolutional)
            from lit_janus.shapes.world import stable_rng

            rng = stable_rng(self.seed, "crop", index)
            n = (pixels.shape[-1] - self.crop) // self.crop_align + 1
            y, x = (rng.randrange(n) * self.crop_align for _ in range(2))
            pixels = pixels[:, y : y + self.crop, x : x + self.crop]
        if not self.captions:
            return pixels
        from lit_janus.shapes.world import grounded_caption, hard_negative, stable_rng

        rng = stable_rng(self.seed, "hard-negative", index)
        negatives = [hard_negative(scene.objects, rng) for _ in range(self.hard_negatives)]
        grounded = [grounded_caption(scene.objects)] if self.grounded else []
        return (pixels, describe(scene.objects), *grounded, *negatives)


class ShapesImageDataModule(L.LightningDataModule):
    """ShapesWorld images for the stage-0 tokenizer/encoder runs (train and a fixed validation set)."""

    def __init__(self, batch_size: int = 32, image_size: int = 64, kind: str = "mixed", captions: bool = False,
                 train_length: int = 1_000_000, val_length: int = 256, seed: int = 0, num_workers: int = 0,
                 crop: int | None = None, crop_align: int = 8, hard_negatives: int = 0, grounded: bool = False):
        """
        Args:
            batch_size: images per step.
            image_size: rendered side in pixels (the model's image_size).
            kind: `scenes`, `t2i` or `mixed` (see `ShapesImages`).
            captions: also yield each scene's description (SigLIP pretraining).
            crop: train on random `crop` x `crop` crops (VQ only: the tokenizer is convolutional);
                validation always sees whole images. None: whole images.
            crop_align: crop offsets are multiples of this (the VQ's downsampling factor).
            hard_negatives: with captions, this many extra captions per training image that are
                wrong in one object's shape or colour (SigLIP only; validation keeps none).
            grounded: with captions, also each scene's objects with their grid cells ("red circle 0 2 ,
                blue square 3 1"), for `SigLIPModule(locca_weight > 0)`; train and validation.
            train_length: images per epoch (the world is infinite; train with max_steps).
            val_length: fixed validation images (another seed: scenes never trained on).
            seed: world seed of the training images (validation uses seed + 1000).
            num_workers: DataLoader workers (rendering is cheap: 0 is fine on a small CPU).
        """
        super().__init__()
        self.save_hyperparameters()
        if captions and crop is not None:
            raise ValueError("crops would cut objects out of their descriptions: use crop only for the VQ")
        self.train_set = ShapesImages(train_length, seed, image_size, kind, captions, crop, crop_align,
                                      hard_negatives, grounded)
        self.val_set = ShapesImages(val_length, seed + 1000, image_size, kind, captions, grounded=grounded)

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(ds, batch_size=h.batch_size, shuffle=shuffle, num_workers=h.num_workers,
                          drop_last=shuffle, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)


# ---------------------------------------------------------------------------------------------
# the quantizer (LlamaGen / DeepSeek, l2-normalised)
# ---------------------------------------------------------------------------------------------
def quantize_l2(z: torch.Tensor, codebook: torch.Tensor, beta: float = 0.25):
    """LlamaGen's `VectorQuantizer(l2_norm=True)` on `JanusVQVAE`'s codebook.

    z: [B, d, h, w] (the output of quant_conv); codebook: [K, d].
    Returns (z_q straight-through [B, d, h, w], codes [B, h*w], codebook loss, commitment loss, normalised z [N, d]).
    The codebook entries are normalised exactly as `JanusVQVAE.decode` normalises them at inference."""
    from lit_janus.vq import l2_nearest_code

    B, d, h, w = z.shape
    z = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)
    e = F.normalize(codebook, dim=-1)
    codes = l2_nearest_code(z.detach(), codebook.detach())
    z_q = e[codes]
    codebook_loss = F.mse_loss(z_q, z.detach())
    commit_loss = beta * F.mse_loss(z, z_q.detach())
    z_q = z + (z_q - z).detach()  # straight-through
    return z_q.view(B, h, w, d).permute(0, 3, 1, 2).contiguous(), codes.view(B, h * w), codebook_loss, commit_loss, z


def codebook_stats(codes: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the K codes used, perplexity exp(H)) of a batch of codes."""
    counts = torch.bincount(codes.flatten(), minlength=K).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return (counts > 0).float().mean(), entropy.exp()


# ---------------------------------------------------------------------------------------------
# the LightningModule
# ---------------------------------------------------------------------------------------------
class VQModule(L.LightningModule):
    """Stage 0a: transformers' `JanusVQVAE` trained with LlamaGen's l2-normalised quantizer."""

    def __init__(
        self,
        config: str | Config = "shapes",
        overrides: dict | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        beta: float = 0.25,
        codebook_weight: float = 1.0,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        restart_every: int = 50,
        log_images_every: int = 200,
        channels_last: bool = True,
        final_lr_fraction: float = 0.1,
    ):
        """
        Args:
            config: model shapes (a preset name or a Config); only the vq_* / codebook_* / image_size fields matter.
            overrides: Config fields to change on top of `config` (e.g. a smaller image_size for tests).
            lr: AdamW learning rate (LlamaGen: 1e-4 at batch 128 on ImageNet; flat shapes take 1e-3).
            betas: AdamW betas.
            weight_decay: AdamW weight decay.
            warmup_steps: linear LR warm-up.
            beta: commitment loss weight (LlamaGen: 0.25).
            codebook_weight: weight of the codebook loss.
            l1_weight: weight of the L1 reconstruction loss.
            l2_weight: weight of the L2 (MSE) reconstruction loss.
            restart_every: every this many steps, codes unused since the last restart are re-seeded on
                random encoder outputs of the batch (0: never).
            log_images_every: log input/reconstruction grids to TensorBoard every this many steps (0: never).
            channels_last: run the convolutions in channels-last memory format (faster on CPU/GPU, same maths).
            final_lr_fraction: cosine-decay the LR after warm-up to this fraction of `lr` at max_steps (1: constant).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["config"])
        self.config = resolve_config(config, overrides)
        self.hparams["config"] = self.config.asdict()
        from transformers import JanusVQVAE

        self.vq = JanusVQVAE(self.config.to_hf().vq_config)
        self.vq.train()  # JanusVQVAE puts itself in eval mode (it is frozen inside Janus)
        K = self.config.codebook_size
        self.register_buffer("usage", torch.zeros(K), persistent=False)  # assignments since the last restart
        if channels_last:
            self.vq.to(memory_format=torch.channels_last)

    # ---- the model ----------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        vq = self.vq
        if self.hparams.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        z = vq.quant_conv(vq.encoder(pixels))
        z_q, codes, codebook_loss, commit_loss, z_flat = quantize_l2(z, vq.quantize.embedding.weight, self.hparams.beta)
        recon = vq.decoder(vq.post_quant_conv(z_q))
        return {"recon": recon, "codes": codes, "codebook_loss": codebook_loss, "commit_loss": commit_loss,
                "z": z_flat}

    def losses(self, pixels: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.hparams
        l1 = F.l1_loss(out["recon"], pixels)
        l2 = F.mse_loss(out["recon"], pixels)
        loss = h.l1_weight * l1 + h.l2_weight * l2 + h.codebook_weight * out["codebook_loss"] + out["commit_loss"]
        return {"loss": loss, "rec_l1": l1, "rec_l2": l2, "codebook_loss": out["codebook_loss"],
                "commit_loss": out["commit_loss"]}

    def training_step(self, pixels, batch_idx):
        out = self(pixels)
        losses = self.losses(pixels, out)
        usage, perplexity = codebook_stats(out["codes"], self.config.codebook_size)
        self.usage += torch.bincount(out["codes"].flatten(), minlength=self.config.codebook_size).float()
        logs = {f"train/{k}": v for k, v in losses.items()}
        logs |= {"train/codebook_usage": usage, "train/perplexity": perplexity}
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=pixels.shape[0])
        self.log("loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log("usage", usage, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        every = self.hparams.restart_every
        if every and (self.global_step + 1) % every == 0:
            self._restart_dead_codes(out["z"], out["codes"].flatten())
        if self.hparams.log_images_every and self.global_step % self.hparams.log_images_every == 0:
            self._log_images(pixels, out["recon"], "train")
        return losses["loss"]

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor, codes: torch.Tensor | None = None) -> None:
        """Re-seed codes unused since the last restart on encoder outputs of the batch (normalised),
        drawn with probability proportional to their squared quantisation error (k-means++ style).

        Uniform draws would land most restarted codes on background patches (most of every
        ShapesWorld image): the background then spreads over dozens of interchangeable codes, which
        reconstructs fine but gives the generator an unpredictable target. Error-weighted draws put
        them where the codebook is short of codes (object edges)."""
        usage = self.usage
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(usage)
        dead = (usage == 0).nonzero().flatten()
        self.log("train/dead_codes", float(dead.numel()), on_step=True, on_epoch=False)
        if dead.numel():
            weight = self.vq.quantize.embedding.weight
            if codes is not None:
                err = (z - F.normalize(weight[codes].float(), dim=-1)).pow(2).sum(-1)
                p = err + 1e-12
            else:
                p = torch.ones(z.shape[0], device=z.device)
            pick = torch.multinomial(p / p.sum(), dead.numel(), replacement=True)
            new = z[pick] + 0.01 * torch.randn_like(z[pick])
            new = F.normalize(new, dim=-1) * weight.norm(dim=-1).mean()
            weight.data[dead] = new.to(weight.dtype)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(weight.data, 0)
            # the optimizer's moments of the restarted rows belong to the old codes
            for opt in self.trainer.optimizers if self._trainer is not None else []:
                state = opt.state.get(weight, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][dead] = 0
        usage.zero_()

    def validation_step(self, pixels, batch_idx):
        out = self(pixels)
        losses = self.losses(pixels, out)
        usage, perplexity = codebook_stats(out["codes"], self.config.codebook_size)
        logs = {f"val/{k}": v for k, v in losses.items()} | {"val/codebook_usage": usage, "val/perplexity": perplexity}
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=pixels.shape[0], sync_dist=True)
        if batch_idx == 0:
            self._log_images(pixels, out["recon"], "val")

    def _log_images(self, pixels: torch.Tensor, recon: torch.Tensor, split: str) -> None:
        logger = self.logger
        if logger is None or not hasattr(getattr(logger, "experiment", None), "add_image"):
            return
        n = min(8, pixels.shape[0])
        grid = torch.cat([pixels[:n], recon[:n].detach().clamp(-1, 1)], dim=0)
        grid = torch.cat(list(grid.float().cpu()), dim=2)  # one row of 2n images
        top, bottom = grid[:, :, : grid.shape[2] // 2], grid[:, :, grid.shape[2] // 2 :]
        logger.experiment.add_image(f"{split}/input_vs_reconstruction", (torch.cat([top, bottom], 1) + 1) / 2,
                                    self.global_step)

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.vq.parameters(), lr=h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay)
        sched = warmup_cosine(opt, h.warmup_steps, _total_steps(self), h.final_lr_fraction)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lit_janus_stage0"] = {"part": "vq", "config": self.config.asdict()}

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode with the inference path (`lit_janus.vq.vq_encode`) and decode (`JanusVQVAE.decode`)."""
        from lit_janus.vq import vq_decode, vq_encode

        return vq_decode(self.vq, vq_encode(self.vq, pixels))


# ---------------------------------------------------------------------------------------------
# exporting stage-0 weights
# ---------------------------------------------------------------------------------------------
def export_state_dict(checkpoint: str | Path | dict, prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix` (`vq.` or `vision.`) of a stage-0 Lightning checkpoint, with the
    prefix stripped: the keys of `JanusPro.vq` / `JanusPro.vision`."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{checkpoint if not isinstance(checkpoint, dict) else 'checkpoint'} has no weights "
                         f"under {prefix!r}")
    return {k: v.contiguous() for k, v in out.items()}


def stage0_meta(checkpoint: str | Path) -> dict | None:
    """The `lit_janus_stage0` entry of a Lightning checkpoint, None for any other checkpoint
    (memory-mapped: the tensors are not read)."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("lit_janus_stage0")


def stage0_config(checkpoint: str | Path) -> Config:
    meta = stage0_meta(checkpoint)
    if meta is None:
        raise ValueError(f"{checkpoint} is not a stage-0 checkpoint (no lit_janus_stage0 metadata)")
    return Config(**meta["config"])


__all__ = ["ShapesImageDataModule", "ShapesImages", "VQModule", "codebook_stats", "export_state_dict",
           "image_to_pixels", "quantize_l2", "resolve_config", "stage0_config", "stage0_meta", "warmup_cosine"]
