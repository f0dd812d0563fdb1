"""The LightningModule: stage freeze policy, the weighted three-task loss, optimisation, logging, FSDP2.

The network (`JanusPro`) is a plain nn.Module built in `configure_model`, so under FSDP2 it is
created on the meta device, sharded, and only then filled with weights (a 7B model never exists
whole on one device). Stages are separate runs: start each from the previous one with
`init_from` (`--ckpt_path` is only for resuming the same run: LightningCLI would overwrite your
arguments with the checkpoint's).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from lit_janus.batch import fill_codes
from lit_janus.config import Config
from lit_janus.model import JanusPro

# Parameter groups of transformers' Janus (names under JanusForConditionalGeneration).
PARTS = {
    "vision": ("model.vision_model.",),
    "aligner": ("model.aligner.",),
    "vq": ("model.vqmodel.",),
    "gen_embed": ("model.generation_embeddings.",),
    "gen_aligner": ("model.generation_aligner.",),
    "gen_head": ("model.generation_head.",),
    "llm": ("model.language_model.", "lm_head."),
}
# Janus-Pro Table 2. The VQ tokenizer is never trained here (ShapesWorld trains it separately).
STAGE_TRAINABLE = {
    1: ["aligner", "gen_embed", "gen_aligner", "gen_head"],
    2: ["aligner", "gen_embed", "gen_aligner", "gen_head", "llm"],
    3: ["aligner", "gen_embed", "gen_aligner", "gen_head", "llm", "vision"],
}


@dataclass
class LossWeights:
    """Weights of the per-task mean cross-entropies in the optimised loss (Janus-Pro: all 1)."""

    und: float = 1.0
    text: float = 1.0
    gen: float = 1.0

    def __post_init__(self):
        weights = dataclasses.asdict(self)
        if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss_weights {weights}: each must be finite and >= 0, and one > 0")


def stop_if_not_finite(trainer, finite: bool, what: str) -> None:
    """Raise on every rank when `what` is not finite on any rank (one raising alone would leave the others
    waiting in the next collective): a diverged run stops before NaNs reach a checkpoint."""
    if trainer is not None and trainer.world_size > 1:
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if not finite:
        step = trainer.global_step if trainer is not None else "?"
        raise FloatingPointError(f"{what} is not finite at step {step} (on at least one rank): stopped, and the last "
                                 "checkpoint was kept; resume from it with a lower learning rate, or check "
                                 "loss_weights and the data")


class WarmupConstantLR(LambdaLR):
    """Linear warm-up from ~0 to the base LR over `warmup_steps`, then constant (Janus-Pro's schedule).

    With `decay_steps` > 0 the LR then follows a cosine from the base LR down to `final_fraction` of it
    over `decay_steps` steps starting at step `decay_start` (warm-up / stable / decay). The paper's stages
    are constant; at ShapesWorld scale on a CPU a 1000-step cool-down after Stage II took ShapesEval from
    0.61 to 0.70 (configs/shapes/README.md, "Generation alone"), and `full.yaml` ends Stages II and III
    with one. Stage 0 decays right after its warm-up (`lit_janus.shapes.vq_training.warmup_cosine`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, decay_start: int | None = None,
                 decay_steps: int = 0, final_fraction: float = 0.0):
        if warmup_steps < 0 or decay_steps < 0:
            raise ValueError(f"warmup_steps and decay_steps must be >= 0, got {warmup_steps} and {decay_steps}")
        if decay_steps and (decay_start is None or decay_start < warmup_steps):
            raise ValueError(f"decay_steps {decay_steps} needs decay_start (the step the cool-down begins), at or "
                             f"after the warm-up's end ({warmup_steps}); got {decay_start}")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
        self.warmup_steps, self.decay_start, self.decay_steps = warmup_steps, decay_start, decay_steps
        self.final_fraction = final_fraction

        def factor(step: int) -> float:
            if decay_steps and step >= decay_start:
                cosine = 0.5 * (1.0 + math.cos(math.pi * min(step - decay_start, decay_steps) / decay_steps))
                return final_fraction + (1.0 - final_fraction) * cosine
            return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0

        super().__init__(optimizer, factor)


def _default_optimizer(params):
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)


class JanusModule(L.LightningModule):
    def __init__(
        self,
        config: str | Config | None = None,
        tokenizer: str | None = None,
        init_from: str | None = None,
        stage: int = 1,
        trainable: list[str] | None = None,
        loss_weights: LossWeights | None = None,
        lr_scale: dict[str, float] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        max_length: int = 4096,
        activation_checkpointing: bool = False,
        compile: bool = False,
        attn_implementation: str = "sdpa",
    ):
        """
        Args:
            config: model shapes: a preset name (janus-pro-1b, janus-pro-7b, shapes, tiny) or a full
                Config. Leave empty with `init_from` pointing at a pretrained directory to take its shapes.
            tokenizer: directory holding the tokenizer (a checkpoint directory works), or `shapes` for
                ShapesWorld's. Defaults to `init_from` when that is a pretrained directory.
            init_from: weights to start from: a pretrained directory (DeepSeek or transformers layout)
                or a Lightning checkpoint of an earlier stage (file or sharded directory). Not a resume.
            stage: Janus-Pro training stage (1, 2 or 3); sets which parts train (see STAGE_TRAINABLE).
            trainable: explicit list of parts to train instead of the stage's (from vision, aligner, vq,
                gen_embed, gen_aligner, gen_head, llm).
            loss_weights: weights of the understanding, text and generation losses.
            lr_scale: LR multipliers per part, e.g. `{vision: 0.1}`: that part trains at 0.1x the
                optimizer's LR (its own parameter group; the scheduler scales it alike). Parts that do
                not train in this stage are ignored, so one setting can serve every stage.
            optimizer: optimizer factory (called with the trainable parameters after sharding).
            scheduler: LR scheduler factory, stepped every optimizer step (e.g. WarmupConstantLR).
            max_length: context length; longer samples are rejected by the processor, never truncated.
            activation_checkpointing: recompute decoder/vision layers in backward to save memory.
            compile: torch.compile each decoder layer (GPU).
            attn_implementation: transformers attention backend (sdpa, eager, flash_attention_2, flex_attention,
                varlen_attention). varlen_attention (lit_janus.attention) and flex_attention apply to the LLM
                only and skip the masked blocks of packed rows; varlen runs flash attention on a GPU (torch >= 2.9),
                flex's backward needs a GPU.
        """
        super().__init__()
        # plain values only: sharded checkpoints reload their metadata with weights_only=True
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "config", "loss_weights"])
        self.hparams["config"] = config.asdict() if isinstance(config, Config) else config
        self.hparams["loss_weights"] = dataclasses.asdict(loss_weights or LossWeights())
        if stage not in STAGE_TRAINABLE:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        self.trainable = list(trainable) if trainable is not None else STAGE_TRAINABLE[stage]
        unknown = sorted(set(self.trainable) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown trainable part(s) {unknown}; choose from {sorted(PARTS)}")
        self.lr_scale = dict(lr_scale or {})
        bad = {k: v for k, v in self.lr_scale.items() if k not in PARTS or not v > 0}
        if bad:
            raise ValueError(f"lr_scale {bad}: keys must be parts ({sorted(PARTS)}) and values > 0")
        self.init_from = init_from
        self.loss_weights = loss_weights or LossWeights()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.activation_checkpointing = activation_checkpointing
        self.compile_layers = compile
        self.attn_implementation = attn_implementation
        self.config, self.processor = _resolve_config_and_processor(config, tokenizer, init_from, max_length)
        if self.config.und_encoder == "vq":  # SigLIP and its aligner sit unused: no gradients, no DDP hangs
            self.trainable = [t for t in self.trainable if t not in ("vision", "aligner")]
        self.model: JanusPro | None = None
        self._step_start: float | None = None

    # ---- building -----------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from lightning.pytorch.strategies import ModelParallelStrategy

        fsdp = self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy)
        if fsdp:
            if self.init_from:  # before the meta build: materialising would fail on the first odd shape
                from lit_janus.checkpoint import read_config_and_processor

                self._check_init_shapes(read_config_and_processor(self.init_from)[0])
            with torch.device("meta"):
                model = JanusPro(self.config, self.attn_implementation)
        else:
            model = self._load_initial(self.config)
        self._freeze(model)
        if self.activation_checkpointing:
            model.janus.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.compile_layers:
            for layer in model.llm.layers:
                layer.compile()
        if fsdp:
            from lit_janus.sharding import materialize_sharded, shard_model

            shard_model(model, self.device_mesh["data_parallel"], self.trainer.precision)
            materialize_sharded(model, self.trainer.strategy.root_device, self._initial_state_dict)
        self.model = model

    def _initial_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full state dict (transformers keys) of `init_from`, or None for random init."""
        if not self.init_from:
            return None
        from lit_janus.checkpoint import load_any

        model, _ = load_any(self.init_from)
        return model.janus.state_dict()

    def _load_initial(self, config: Config) -> JanusPro:
        from lit_janus.checkpoint import build_model, load_any

        if not self.init_from:
            # built where Lightning's init context points (the GPU): not on it, copied off, copied back
            return build_model(config, attn_implementation=self.attn_implementation,
                               device=torch.get_default_device())
        model, _ = load_any(self.init_from, attn_implementation=self.attn_implementation)
        self._check_init_shapes(model.config)
        return model

    def _check_init_shapes(self, init_config: Config) -> None:
        ours, theirs = self.config.asdict(), init_config.asdict()
        diff = [f"{k} {theirs[k]} vs {ours[k]}" for k in ours if k != "name" and ours[k] != theirs.get(k)]
        if diff:
            raise ValueError(f"init_from {self.init_from} has shapes {init_config.name!r} but this run expects "
                             f"{self.config.name!r} ({'; '.join(diff)})")

    def _freeze(self, model: JanusPro) -> None:
        prefixes = tuple(p for part in self.trainable for p in PARTS[part])
        for name, p in model.janus.named_parameters():
            p.requires_grad_(name.startswith(prefixes))

    # No train()/eval() switching of frozen parts: Janus-Pro has no dropout (tests check every preset), so
    # the mode changes nothing numerically, except that transformers recomputes (activation checkpointing)
    # only layers in train mode - a frozen Stage-I LLM that backward still runs through must stay in it.
    # (Lightning 2.6 keeps each submodule's mode as built; transformers builds the VQ in eval mode.)

    def setup(self, stage: str) -> None:
        """The data must be tokenised and sized for this model: check before the first step."""
        dm = getattr(self.trainer, "datamodule", None)
        proc = getattr(dm, "processor", None)
        if proc is None:
            return
        ours = self.processor
        mismatch = [f"{name}: data {getattr(proc, name)} vs model {getattr(ours, name)}"
                    for name in ("bos_id", "eos_id", "pad_id", "image_id", "boi_id", "eoi_id", "num_image_tokens")
                    if getattr(proc, name) != getattr(ours, name)]
        if proc.image.image_size != ours.image.image_size:
            mismatch.append(f"image_size: data {proc.image.image_size} vs model {ours.image.image_size}")
        if mismatch:
            raise ValueError("the data module's tokenizer/image settings do not match the model's (set "
                             "data.tokenizer, image_size and num_image_tokens to the model's): " + "; ".join(mismatch))
        if self.config.und_encoder == "vq" and (set(proc.image.mean) != {0.5} or set(proc.image.std) != {0.5}):
            raise ValueError(f"und_encoder=vq feeds understanding pixels to the VQ, whose input is [-1, 1]: the data "
                             f"must normalise with mean = std = 0.5, not {proc.image.mean} / {proc.image.std}")
        if proc.system_prompt != ours.system_prompt:
            # the chat format is the data's choice; the checkpoints record it for predict/evaluation
            rank_zero_info(f"system prompt: {ours.system_prompt!r} -> {proc.system_prompt!r} (from the data module)")
            ours.system_prompt = proc.system_prompt

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, p in self.model.janus.named_parameters():
            if p.requires_grad:
                part = next((k for k, prefixes in PARTS.items() if name.startswith(prefixes)), None)
                groups.setdefault(self.lr_scale.get(part, 1.0), []).append(p)
        if not groups:
            raise ValueError(f"nothing to train: trainable parts {self.trainable} have no parameters")
        if list(groups) == [1.0]:
            opt = self.optimizer_factory(groups[1.0])
        else:
            opt = self.optimizer_factory([{"params": ps, "lr_scale": k} for k, ps in groups.items()])
            for g in opt.param_groups:  # before the scheduler reads its base LRs
                g["lr"] *= g["lr_scale"]
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by total norm (works on FSDP2's DTensor gradients) and log the pre-clip norm."""
        if gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or float("inf"))
        if self._logs_this_step():
            self.log("train/grad_norm", norm.full_tensor() if hasattr(norm, "full_tensor") else norm,
                     on_step=True, on_epoch=False)

    # ---- steps ------------------------------------------------------------------------------
    def _prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokenise the step's text-to-image images with the frozen VQ (records with pre-extracted codes
        need nothing). Under FSDP2 the VQ's gather is a collective, and image and code records may share a
        source or a step, so one rank can have images to encode while another has none: that rank joins
        the gather anyway, or the others would wait for it forever (NCCL) or fail (gloo)."""
        has_images = "gen_pixels" in batch
        t = self._trainer
        if t is not None and t.world_size > 1 and hasattr(self.model.vq, "unshard"):
            if t.strategy.reduce_boolean_decision(has_images, all=False) and not has_images:
                with self.model.vq_gathered():
                    pass
        if has_images:
            batch = fill_codes(batch, self.model.encode_images(batch["gen_pixels"]))
        return batch

    def _shared_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        batch = self._prepare(batch)
        out = self.model(batch)
        w = self.loss_weights
        loss = w.und * out["und_loss"] + w.text * out["text_loss"] + w.gen * out["gen_loss"]
        n_rows = batch["input_ids"].shape[0]
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=n_rows,
                 sync_dist=not on_step)
        if on_step and not self._logs_this_step():
            return loss
        for task in ("und", "text", "gen"):
            n = int(out[f"{task}_tokens"])
            if n:
                self.log(f"{split}/{task}_loss", out[f"{task}_loss"], on_step=on_step, on_epoch=not on_step,
                         batch_size=n, sync_dist=not on_step)
                self.log(f"{split}/{task}_acc", out[f"{task}_correct"].float() / n, on_step=on_step,
                         on_epoch=not on_step, batch_size=n, sync_dist=not on_step)
        for key, value in batch.items():
            if key.startswith(("skipped_", "turns_cut_")) or key == "cfg_dropped":
                tag = f"data/{key}" if on_step else f"{split}_data/{key}"  # validation's own tags: not one zig-zag
                self.log(tag, value.float().sum(), on_step=on_step, on_epoch=not on_step, reduce_fx="sum", batch_size=1)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether this training step's on-step metrics reach the logger (Lightning writes them every
        `log_every_n_steps`) or end the run. Only then are they logged: each `self.log` costs ~0.7 ms
        of host time and each count read a host sync, which a launch-bound GPU step (ShapesWorld's)
        would otherwise pay at every step. `train/loss` is logged at every step (progress bar)."""
        t = self.trainer
        return bool(t._logger_connector.should_update_logs or t.fast_dev_run or t.is_last_batch
                    or 0 < t.max_steps <= t.global_step + 1)

    def training_step(self, batch, batch_idx):
        loss = self._shared_step(batch, "train")
        if self._logs_this_step():  # a host sync: only where logging syncs anyway (Checkpoint checks every save)
            finite = bool(torch.isfinite(loss))
            stop_if_not_finite(self.trainer, finite, "the training loss" + ("" if finite else f" ({float(loss)})"))
        self._log_throughput(batch)
        return loss

    def _log_throughput(self, batch) -> None:
        """tokens/s, model TFLOP/s and MFU (on known GPUs) of this rank, measured between steps
        (so it includes data loading, backward and the optimizer; see lit_janus.flops)."""
        from lit_janus.flops import peak_flops, step_flops

        now = time.perf_counter()
        if self._step_start is not None and self._logs_this_step():
            dt = max(now - self._step_start, 1e-9)
            tokens = int((batch["task_ids"] > 0).sum())
            flops = step_flops(self.config, batch)
            self.log("train/tokens_per_sec", tokens / dt, on_step=True, prog_bar=True)
            self.log("train/tflops_per_sec", flops / dt / 1e12, on_step=True)
            if (peak := peak_flops(self.device)) is not None:
                self.log("train/mfu", flops / dt / peak, on_step=True)
        self._step_start = now

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    # ---- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make every Lightning checkpoint self-describing: shapes, tokenizer files, image settings,
        so `lit_janus.convert` and `init_from` need nothing else."""
        from lit_janus.checkpoint import lightning_metadata

        checkpoint["lit_janus"] = lightning_metadata(self.config, self.processor)


def _resolve_config_and_processor(config, tokenizer, init_from, max_length):
    from lit_janus.checkpoint import read_config_and_processor, processor_for

    if isinstance(config, str):
        config = Config.from_name(config)
    if init_from and config is None:
        config, processor = read_config_and_processor(init_from, max_length=max_length)
        if tokenizer is None:
            return config, processor
    if config is None:
        raise ValueError("set `config` (a preset name or shapes) or `init_from` (a pretrained directory)")
    if tokenizer is None:
        if init_from is None:
            raise ValueError("set `tokenizer` (a directory, or `shapes`) when not starting from a checkpoint")
        _, processor = read_config_and_processor(init_from, max_length=max_length)
    else:
        processor = processor_for(tokenizer, config, max_length=max_length)
    config.image_token_id = processor.image_id
    if len(processor.tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(processor.tokenizer)} tokens but config.vocab_size={config.vocab_size}")
    return config, processor
