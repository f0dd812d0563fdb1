"""Training-time callbacks.

`SampleImages` renders images for fixed prompts every N optimizer steps and logs them to
TensorBoard, so a run shows what the generation head has learnt, not only its loss.
`StepTimes` says where a training step's wall time goes: the data, the step's own code, the GPU.
`Checkpoint` is Lightning's ModelCheckpoint with a `last.ckpt` that is always the end of the run, and
checkpoints that are never half written.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from weakref import proxy

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


@contextmanager
def full_parameters(model):
    """Gather FSDP2-sharded parameters for code that reads weights outside the units' forward (the
    fast sampler does); a no-op for an unsharded model. Collective: every rank must enter."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        FSDPModule = ()  # noqa: N806
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in reversed(units):
            u.reshard()


class SampleImages(Callback):
    """Every `every_n_steps` optimizer steps, generate images for `prompts` with the model being
    trained and log them to TensorBoard (tag `samples/<i>`, one batch of images per prompt).

    Expects the LightningModule to expose `model` (a `JanusPro`) and `processor`. All ranks sample
    (under FSDP2 each must take part in gathering the weights, and every rank draws the same
    images from the same seeds); rank 0 logs. The seeds are fixed, so successive logs show the same
    draws as training proceeds.

    Args:
        prompts: the prompts to render.
        every_n_steps: sampling interval in optimizer steps.
        images_per_prompt: images per prompt.
        cfg_weight: classifier-free guidance weight.
        temperature: sampling temperature.
        top_k: optional top-k filtering.
        top_p: optional nucleus filtering.
        seed: prompt i uses seed + i.
    """

    def __init__(self, prompts: list[str], every_n_steps: int = 1000, images_per_prompt: int = 4,
                 cfg_weight: float = 5.0, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0):
        if not prompts:
            raise ValueError("SampleImages needs at least one prompt")
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        self.prompts, self.every_n_steps, self.images_per_prompt = list(prompts), every_n_steps, images_per_prompt
        self.cfg_weight, self.temperature, self.top_k, self.top_p = cfg_weight, temperature, top_k, top_p
        self.seed = seed
        self._last_step = -1
        self._prompts_logged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # with gradient accumulation this hook runs several times per optimizer step: sample once
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        images = self.sample(trainer, pl_module)
        if trainer.is_global_zero:
            self.log_images(trainer, images, step)

    @torch.no_grad()
    def sample(self, trainer, pl_module) -> list[torch.Tensor]:
        """uint8 [n, S, S, 3] images for each prompt."""
        from lit_janus.decoder import StaticDecoder
        from lit_janus.generate import generate

        model = pl_module.model
        modes = {m: m.training for m in model.modules()}  # restore exactly (frozen parts stay in eval)
        model.eval()
        try:
            with full_parameters(model), trainer.precision_plugin.forward_context():
                # eager decoding: the weights change between calls (no graphs to keep) and autocast
                # does not mix with CUDA-graph capture
                gen = generate(model, pl_module.processor, self.prompts, images_per_prompt=self.images_per_prompt,
                               seeds=self.seed, cfg_weight=self.cfg_weight, temperature=self.temperature,
                               top_k=self.top_k, top_p=self.top_p,
                               decoder=StaticDecoder(model, cuda_graphs=False, compile=False))
        finally:
            for m, mode in modes.items():
                m.training = mode
        n = self.images_per_prompt
        return [gen.images[i * n:(i + 1) * n] for i in range(len(self.prompts))]

    def log_images(self, trainer, images: list[torch.Tensor], step: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                exp = logger.experiment
                for i, (prompt, ims) in enumerate(zip(self.prompts, images)):
                    exp.add_images(f"samples/{i:02d}", ims, step, dataformats="NHWC")
                    if not self._prompts_logged:  # once: which prompt is which
                        exp.add_text(f"samples/{i:02d}/prompt", prompt, step)
                exp.flush()
        self._prompts_logged = True


class Checkpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, except that `last.ckpt` always holds the state at the end of fit, and
    a checkpoint is written under a temporary name beside its own and renamed when whole.

    With `every_n_train_steps`, Lightning 2.6 writes `last` only at multiples of it and skips the save
    at the end once any `last` was written: a 350-step run saving every 200 steps ended with a
    `last.ckpt` of step 200, which the next stage, `convert` and a resume then took for the result.

    Lightning rewrites a sharded (FSDP2) checkpoint in place, shard by shard and then its `meta.pt`, so a
    run killed while saving was left with shards of two steps (or new weights beside the old loop and
    data state) under the name it resumes from; a single-file checkpoint it writes to the system temp
    directory and moves, a copy when that is another filesystem. Here the new checkpoint takes the old
    one's name only once complete (`.<name>.partial` until then), so an interrupted save keeps the
    previous checkpoint. Weights that are not finite (a diverged run) stop the run instead of being saved."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        from lit_janus.atomic import remove_path, replace_dir
        from lit_janus.module import stop_if_not_finite

        # a diverged run must not overwrite the last good checkpoint with NaNs (one host sync per save)
        local = [p.to_local() if hasattr(p, "to_local") else p for p in trainer.lightning_module.parameters()]
        finite = [torch.isfinite(p).all() for p in local if p.is_floating_point() and p.numel()]
        stop_if_not_finite(trainer, bool(torch.stack(finite).all()) if finite else True, "a weight about to be saved")
        if "://" in str(filepath):  # object stores (s3://...): no rename there; Lightning's own save
            return super()._save_checkpoint(trainer, filepath)
        dest = Path(filepath)
        partial = dest.with_name(f".{dest.name}.partial")
        if trainer.is_global_zero:
            remove_path(partial)  # what a killed save left
        trainer.strategy.barrier("checkpoint: partial cleared")
        trainer.save_checkpoint(partial, self.save_weights_only)  # every rank writes its part, then a barrier
        if trainer.is_global_zero:
            replace_dir(partial, dest)
        trainer.strategy.barrier("checkpoint: renamed")
        # what ModelCheckpoint._save_checkpoint does after writing
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)


class StepTimes(Callback):
    """Where each training batch's wall time goes: medians logged every `log_every_n_steps` optimizer
    steps over the batches since the last log (`time/*_ms` in TensorBoard), and over the whole run from
    `summary()` (the ShapesWorld pipeline prints that per run). A batch is a step without gradient
    accumulation; with it, an optimizer step is `accumulate_grad_batches` batches (and `steps` in
    `summary()` counts batches).

    - `period_ms`: from one batch's start to the next one's (what a step costs).
    - `data_ms`: from a batch's end to the next one's start: fetching the batch from the loader
      (waiting for its workers), packing it (`on_before_batch_transfer`), copying it to the device,
      and the loop's own bookkeeping between steps. On the steps where a later callback works at a
      batch's end (SampleImages, ShapesEvalCallback) that work lands here too: read the medians.
    - `step_ms`: from a batch's start to its end: forward, backward and optimizer, as launched by
      the Python process (the GPU may still be working when it returns).
    - `gpu_backlog_ms` (every `sync_every` steps, CUDA only): how long `cuda.synchronize()` waits
      at a batch's end. Near 0: the GPU waits for the Python process (launch- or data-bound, make
      steps bigger or fewer); large: the GPU is the bottleneck. Synchronising only sampled steps
      leaves the others' CPU/GPU overlap alone.
    The first `skip` steps (compilation, worker start-up) are left out."""

    def __init__(self, sync_every: int = 20, skip: int = 5, log_every_n_steps: int | None = None):
        """
        Args:
            sync_every: synchronise CUDA at the end of every this many steps to measure the GPU backlog (0: never).
            skip: steps left out at the start.
            log_every_n_steps: log the window's medians this often (default: the trainer's `log_every_n_steps`).
        """
        self.sync_every, self.skip, self.log_every_n_steps = sync_every, skip, log_every_n_steps
        self.times: dict[str, list[float]] = {}  # the whole run
        self.window: dict[str, list[float]] = {}  # since the last log
        self._start = self._end = None
        self._step = 0
        self._logged_at = -1  # the optimizer step of the last log

    def _add(self, key: str, seconds: float) -> None:
        if self._step > self.skip:
            for store in (self.times, self.window):
                store.setdefault(key, []).append(1e3 * seconds)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self._add("period_ms", now - self._start)
        if self._end is not None:
            self._add("data_ms", now - self._end)
        self._start = now
        self._step += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._add("step_ms", now - self._start)
        if self.sync_every and self._step % self.sync_every == 0 and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            self._add("gpu_backlog_ms", time.perf_counter() - now)
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step  # optimizer steps: under accumulation, batches share one
        if every and step % every == 0 and step != self._logged_at and trainer.logger is not None:
            self._logged_at = step
            window, self.window = _medians(self.window), {}
            if window.get("steps"):
                trainer.logger.log_metrics({f"time/{k}": v for k, v in window.items() if k != "steps"},
                                           step=trainer.global_step)
        self._end = time.perf_counter()

    def summary(self) -> dict[str, float]:
        """Median milliseconds per key over the run, and `steps` (how many steps they cover)."""
        return _medians(self.times)


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    out = {k: round(statistics.median(v), 2) for k, v in times.items() if v}
    if times.get("period_ms"):
        out["steps"] = len(times["period_ms"])
    return out
