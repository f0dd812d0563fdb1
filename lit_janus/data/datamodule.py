"""`JanusDataModule`: the three Janus-Pro task streams mixed at the stage ratio in every step on every rank.

Each active task (ratio > 0) gets its own DataLoader over a `TaskStream` with its own per-device
batch size; a `CombinedLoader(mode="max_size_cycle")` steps them together and
`on_before_batch_transfer` merges one step's samples into **one** collated (optionally packed)
batch, so the model runs one forward per step. The streams are endless: train with `max_steps`
and validate every `val_check_interval: <int>` steps (an endless loader has no epoch end).

The batch the LightningModule receives (all tensors; see `lit_janus.batch` for the first group):
    input_ids, position_ids, text_labels, gen_labels, gen_mask, image_mask, task_ids  [rows, length]
    pixel_values   [n_und_images, 3, S, S]  understanding images (only if the step has any)
    gen_pixels     [n, 3, S, S] in [-1, 1]  t2i images still to VQ-encode (only for image records;
                   `encode_mask` [rows, length] marks their documents, next to t2i samples with
                   pre-extracted codes): `batch = lit_janus.batch.fill_codes(batch, model.encode_images(gen_pixels))`
    samples_und, samples_text, samples_t2i   samples of each task in this step (0-dim long)
    skipped_und, skipped_text, skipped_t2i   bad records skipped (and replaced) to fill this step
    turns_cut_und, turns_cut_text, turns_cut_t2i   conversation turns left out: beyond the context
    cfg_dropped    t2i samples that got the unconditional prompt (classifier-free guidance)
    num_tokens     non-padding tokens in the batch (for throughput)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lit_janus.batch import TASKS
from lit_janus.data.mixing import TaskRatio, merge, task_batch_sizes
from lit_janus.data.sources import Source, StreamingSource
from lit_janus.data.stream import TaskBatch, TaskStream, steady_offsets
from lit_janus.processor import ImageSettings, JanusProcessor
from lit_janus.tokenizer import DEFAULT_SYSTEM_PROMPT

TaskSources = list[Source | StreamingSource] | None


def load_tokenizer(spec: str):
    """`shapes` (ShapesWorld's tokenizer) or a directory holding a tokenizer (checkpoint or tokenizer dir)."""
    if spec == "shapes":
        from lit_janus.shapes.tokenizer import shapes_tokenizer

        return shapes_tokenizer()
    from lit_janus.checkpoint import load_tokenizer as from_directory

    return from_directory(spec)


def image_settings(tokenizer: str, image_size: int) -> ImageSettings:
    """Normalisation from a checkpoint's `preprocessor_config.json` when there is one (Janus-Pro: 0.5/0.5)."""
    f = Path(tokenizer) / "preprocessor_config.json"
    if tokenizer == "shapes" or not f.is_file():
        return ImageSettings(image_size=image_size)
    p = json.loads(f.read_text())
    return ImageSettings(image_size=image_size, mean=tuple(p.get("image_mean", (0.5,) * 3)),
                         std=tuple(p.get("image_std", (0.5,) * 3)), min_size=p.get("min_size", 14))


def _identity(x):
    return x


class JanusDataModule(L.LightningDataModule):
    """Understanding, text and text-to-image streams mixed at a fixed ratio in every step on every rank."""

    def __init__(
        self,
        tokenizer: str = "shapes",
        und: TaskSources = None,
        text: TaskSources = None,
        t2i: TaskSources = None,
        val_und: TaskSources = None,
        val_text: TaskSources = None,
        val_t2i: TaskSources = None,
        ratio: TaskRatio = TaskRatio(),  # frozen: a shared default is safe
        global_batch_size: int = 16,
        round_ratio: bool = False,
        image_size: int = 384,
        num_image_tokens: int = 576,
        max_length: int = 4096,
        pack_length: int | None = None,
        cfg_dropout: float = 0.1,
        strict: bool = False,
        val_batches: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        system_prompt: str | None = None,
    ):
        """
        Args:
            tokenizer: a checkpoint or tokenizer directory, or `shapes` for ShapesWorld's tokenizer.
            und: understanding sources (JSONL manifests, ShapesWorld `qa`, or one litdata directory).
            text: pure-text sources.
            t2i: text-to-image sources (manifests with images or pre-extracted codes, ImageNet-style
                class folders, WebDataset tar shards, ShapesWorld `t2i`/`class`, or one litdata directory).
            val_und: held-out understanding sources for validation (same per-step mix as training).
            val_text: held-out text sources.
            val_t2i: held-out text-to-image sources.
            ratio: samples of und : text : t2i per step (Table 2: 1:0:3, 2:3:5, 5:1:4); 0 switches a
                task off. Default 1:0:3.
            global_batch_size: samples per optimizer step over all devices and accumulated micro-batches.
            round_ratio: round the per-device split to whole samples when the ratio does not divide
                exactly (otherwise that is an error naming the batch sizes that would divide).
            image_size: image side for both pathways (384 for Janus-Pro, 64 for ShapesWorld).
            num_image_tokens: tokens per image in both pathways (576 for Janus-Pro, 64 for ShapesWorld).
            max_length: context length; longer samples are skipped and counted, never truncated, with two
                exceptions: a long conversation keeps its leading turns that fit (`data/turns_cut_*`
                counts the rest), and a pure-text document gives one max_length window per epoch.
            pack_length: pack each step's samples first-fit into rows of this many tokens (4096 for
                Janus-Pro; documents stay apart through restarted position ids); None pads per row.
            cfg_dropout: fraction of t2i samples trained with the unconditional prompt (CFG).
            strict: raise on the first bad record instead of skipping and counting it.
            val_batches: validation steps per rank and validation run.
            num_workers: DataLoader worker processes per task stream.
            seed: seed of the shuffle order, CFG dropout and bad-record replacement.
            system_prompt: text before the first user turn of understanding samples; None = DeepSeek's
                default, "" = none. The trained model's checkpoints record it, so `predict` and the
                evaluations ask questions in the same format.
        """
        super().__init__()
        self.tokenizer = tokenizer
        self.sources = {"und": list(und or []), "text": list(text or []), "t2i": list(t2i or [])}
        self.val_sources = {"und": list(val_und or []), "text": list(val_text or []), "t2i": list(val_t2i or [])}
        self.ratio = ratio
        self.global_batch_size, self.round_ratio = global_batch_size, round_ratio
        self.image_size, self.num_image_tokens, self.max_length = image_size, num_image_tokens, max_length
        self.pack_length, self.cfg_dropout, self.strict = pack_length, cfg_dropout, strict
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.val_batches, self.num_workers, self.seed = val_batches, num_workers, seed
        if pack_length is not None and pack_length < max_length:
            raise ValueError(f"pack_length {pack_length} < max_length {max_length}: a sample of max_length "
                             "tokens would not fit a packed row")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        active = [t for t in TASKS if getattr(self.ratio, t) > 0]
        missing = [t for t in active if not self.sources[t]]
        if missing:
            raise ValueError(f"ratio {self.ratio_str} mixes {missing} but no {'/'.join(missing)} sources are "
                             "configured")
        for t in TASKS:
            if t not in active and (self.sources[t] or self.val_sources[t]):
                rank_zero_warn(f"{t} sources are configured but the ratio {self.ratio_str} switches {t} off")
        self.active = active
        self.batch_sizes: dict[str, list[int]] | None = None  # per task: its count in each micro-batch of a step
        self._processor: JanusProcessor | None = None
        # Where the train streams resume (Lightning saves this in checkpoints; counted in the main process,
        # so prefetched steps do not count). Positions are kept per task in samples, not steps, so that a
        # run resumes exactly with another world size or gradient accumulation (same per-task samples per
        # optimizer step): map-style streams are one sequence of records over all ranks (stream.py).
        self._train_steps = 0  # micro-batches consumed
        self._samples: dict[str, int] = {}  # per task, consumed by all ranks
        self._steps_only = False  # a checkpoint from before `_samples`: its position is train_steps x this layout
        # litdata tasks: {"world_size", "workers", "read": records read from each worker's shard, on every rank}
        self._shards: dict[str, dict] = {}

    @property
    def ratio_str(self) -> str:
        return ":".join(f"{getattr(self.ratio, t):g}" for t in TASKS) + " (und:text:t2i)"

    @property
    def processor(self) -> JanusProcessor:
        """The processor every stream formats samples with (built on first use)."""
        if self._processor is None:
            self._processor = JanusProcessor(
                load_tokenizer(self.tokenizer), num_image_tokens=self.num_image_tokens,
                image=image_settings(self.tokenizer, self.image_size), max_length=self.max_length,
                system_prompt=self.system_prompt,
            )
        return self._processor

    def task_batch_sizes(self, world_size: int = 1, accumulate_grad_batches: int = 1) -> dict[str, list[int]]:
        """Per-device samples of each task in each micro-batch of an optimizer step, for a parallel layout."""
        return task_batch_sizes(self.global_batch_size, self.ratio, world_size, accumulate_grad_batches,
                                self.round_ratio)

    # ---- Lightning hooks -----------------------------------------------------------------------
    def _layout(self) -> tuple[int, int, int, int]:
        """(rank, world_size, num_nodes, accumulate_grad_batches), from the trainer when attached."""
        t = self.trainer
        if t is None:
            return 0, 1, 1, 1
        return t.global_rank, t.world_size, t.num_nodes, t.accumulate_grad_batches

    def setup(self, stage: str | None = None) -> None:
        _, world, _, accumulate = self._layout()
        self.batch_sizes = self.task_batch_sizes(world, accumulate)
        _ = self.processor  # fail fast on a bad tokenizer path
        micro = sum(n[0] for n in self.batch_sizes.values())
        rank_zero_info(
            f"JanusDataModule: ratio {self.ratio_str}, {self.global_batch_size} samples per step = {world} device(s) "
            f"x {accumulate} micro-batch(es) x {micro} [" + ", ".join(
                f"{t} {'+'.join(map(str, self.batch_sizes[t]))}" for t in TASKS) + "]"
            + (f", packed into rows of {self.pack_length} tokens" if self.pack_length else "")
        )

    def _resume_at(self, task: str, streaming: bool) -> tuple[int, list[int] | None]:
        """(start micro-batch, shard_offsets) of a train stream in this layout, from the position reached so far."""
        _, world, _, _ = self._layout()
        sizes = self.batch_sizes[task]
        per_step = sum(sizes) * world  # samples of the task per optimizer step, all ranks
        if self._steps_only:  # a checkpoint from before `_samples`: micro-batches of this layout's sizes
            cycles, i = divmod(self._train_steps, len(sizes))
            self._samples.setdefault(task, (cycles * sum(sizes) + sum(sizes[:i])) * world)
        consumed = self._samples.setdefault(task, 0)
        steps, extra = divmod(consumed, per_step)
        start = steps * len(sizes)
        if extra:  # another split of the task's samples per optimizer step (round_ratio, global_batch_size)
            rank_zero_warn(f"the {task} stream resumes after {consumed} samples, not a whole number of this "
                           f"layout's optimizer steps of {per_step}: {extra} samples are drawn a second time")
        if not streaming:
            return start, None
        workers = max(1, self.num_workers)  # litdata shards of this rank: one per DataLoader worker
        saved = self._shards.get(task)
        if saved is None:  # no positions saved (map-style checkpoint, or none): as if run in this layout
            read = steady_offsets(self.batch_sizes[task], start, workers)
        elif (saved["world_size"], saved["workers"]) == (world, workers):
            read = saved["read"]
        else:
            # litdata splits the data into shards per rank and worker by chunks, so in another layout no
            # shard continues where an old one stopped. A warning, not an error: resuming on other
            # hardware must stay possible, and the cost is this epoch's order (records seen twice or not
            # at all). Each new shard skips its share of the records read so far.
            rank_zero_warn(
                f"the litdata {task} stream was saved with world_size {saved['world_size']} and "
                f"{saved['workers']} DataLoader worker(s), and resumes with {world} and {workers}: the litdata "
                "shards differ, so this epoch's order does not continue exactly (some records repeat, others "
                "are left out). Resume with the saved world_size and num_workers to continue exactly."
            )
            read = [sum(saved["read"]) * saved["world_size"] // (world * workers)] * workers
        self._shards[task] = {"world_size": world, "workers": workers, "read": read}
        return start, read

    def _loader(self, task: str, sources, *, train: bool) -> DataLoader:
        rank, world, nodes, _ = self._layout()
        streaming = len(sources) == 1 and isinstance(sources[0], StreamingSource)
        start, offsets = self._resume_at(task, streaming) if train else (0, None)
        stream = TaskStream(
            task, sources[0] if streaming else sources,
            self.processor, self.batch_sizes[task], rank=rank, world_size=world, num_nodes=nodes,
            seed=self.seed if train else self.seed + 1, shuffle=train, start_step=start, shard_offsets=offsets,
            num_steps=None if train else self.val_batches, cfg_dropout=self.cfg_dropout if train else 0.0,
            strict=self.strict,
        )
        if self.num_workers > 0:
            # the fast tokenizer's thread pool does not survive fork; without this it warns in every worker
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(stream, batch_size=None, collate_fn=_identity, num_workers=self.num_workers)

    def train_dataloader(self) -> CombinedLoader:
        if self.batch_sizes is None:
            self.setup("fit")
        return CombinedLoader({t: self._loader(t, self.sources[t], train=True) for t in self.active},
                              mode="max_size_cycle")

    def val_dataloader(self) -> CombinedLoader | list:
        if self.batch_sizes is None:
            self.setup("validate")
        tasks = [t for t in self.active if self.val_sources[t]]
        if not tasks or self.val_batches < 1:
            if self.trainer is not None and self.trainer.state.fn == "validate":  # `main.py validate`: say why
                raise ValueError("nothing to validate: set val_und / val_text / val_t2i sources (for the mixed "
                                 f"tasks {self.active}) and val_batches >= 1 (now {self.val_batches})")
            return []
        if len(tasks) < len(self.active):
            rank_zero_warn(f"validation mixes only {tasks}: no val sources for "
                           f"{[t for t in self.active if t not in tasks]}")
        return CombinedLoader({t: self._loader(t, self.val_sources[t], train=False) for t in tasks},
                              mode="max_size_cycle")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Merge one step's per-task sample lists into one collated batch (see the module docstring).
        Runs in the main process, right before the step: counting here counts consumed steps only."""
        if isinstance(batch, dict) and batch and all(isinstance(v, TaskBatch) for v in batch.values()):
            if self.trainer is not None and self.trainer.training:
                self._advance(batch)
            return merge(batch, self.processor.pad_id, self.pack_length)
        return batch

    def _advance(self, parts: dict[str, TaskBatch]) -> None:
        _, world, _, _ = self._layout()
        self._train_steps += 1
        for task, part in parts.items():
            self._samples[task] += len(part.samples) * world
            if part.position is not None:
                shard, read = part.position
                self._shards[task]["read"][shard] = read

    def state_dict(self) -> dict:
        # the streams are pure functions of their position, so these counts are the whole loader state
        # (plain ints and lists: sharded checkpoints reload it with weights_only=True)
        state = {"train_steps": self._train_steps, "samples": dict(self._samples)}
        if self._shards:
            state["shards"] = {t: {**v, "read": list(v["read"])} for t, v in self._shards.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_steps = int(state_dict.get("train_steps", 0))
        self._samples = {t: int(n) for t, n in state_dict.get("samples", {}).items()}
        self._steps_only = "samples" not in state_dict
        self._shards = {t: {**v, "read": [int(n) for n in v["read"]]} for t, v in state_dict.get("shards", {}).items()}
