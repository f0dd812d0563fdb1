"""One task stream: an endless (or, for validation, fixed-length) iterable of per-step sample lists.

Why not a map-style Dataset + DistributedSampler per task: a `CombinedLoader(max_size_cycle)`
restarts the shorter loaders with the *same* shuffle order inside an epoch (verified, see
shared/reference/lightning_cli_fsdp_data.md §3.1), and ranks must never run out at different
steps. Here every step's samples are a pure function of (seed, task, rank, step):

    position p = step * batch_size + k on this rank  ->  global position g = p * world_size + rank
    epoch, i = divmod(g, len(source))                ->  record = source[permutation(seed, epoch)[i]]

(With gradient accumulation a task's count may differ between the micro-batches of an optimizer step,
e.g. 4/3/3/3: `batch_size` is then that cycle, and p counts the samples of the steps before.)

so ranks draw disjoint records, every record is seen once per epoch across all ranks, the result
does not depend on the number of DataLoader workers (worker j makes steps j, j+w, ...), and a run
resumes exactly by starting at its step count (`start_step`).

A bad record (unreadable image, empty caption, conversation too long, ...) is replaced by a
seeded random draw and counted in `TaskBatch.skipped`, so the step keeps its exact task ratio;
`strict=True` raises instead.

Streaming (litdata) sources are read in litdata's own order, which litdata splits into one shard per
(rank, DataLoader worker). Step t reads `batch_size` records of shard t mod w, whichever worker makes
it, and every step reads exactly that many (a bad record is replaced from a second, differently
seeded pass over the data), so a shard's position is a function of the steps: a run resumes exactly
from `start_step` and the records read from each shard (`shard_offsets`; `TaskBatch.position` reports
them), the same number of workers and ranks provided. The replacements for bad records are the only
part that does not continue exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lit_janus.batch import TASK_ID, Sample
from lit_janus.data.sources import Source, StreamingSource
from lit_janus.data.tasks import to_sample
from lit_janus.processor import JanusProcessor

log = logging.getLogger(__name__)
# Every way a record can be unusable: BadRecord, PromptTooLongError and PIL errors are ValueErrors,
# a missing file is an OSError. Anything else is a bug and propagates.
RECORD_ERRORS = (OSError, ValueError)
MAX_LOGGED = 5  # bad records logged per stream and worker; the rest are only counted


class BadSampleError(RuntimeError):
    """A bad record in `strict` mode, or a stream that produces nothing but bad records."""


def steady_offsets(batch_size: int | Sequence[int], start_step: int, shards: int) -> list[int]:
    """Records read from each litdata shard of a rank before `start_step`, had this layout run since step 0:
    step t reads `batch_size` records (or `batch_size[t % len(batch_size)]`) of shard t mod `shards`."""
    sizes = np.atleast_1d(np.asarray(batch_size, dtype=np.int64))
    per_step = sizes[np.arange(start_step) % len(sizes)]
    return [int(per_step[r::shards].sum()) for r in range(shards)]


class TaskBatch:
    """One step's samples of one task (what a task loader yields).

    A plain class, not a dataclass, on purpose: Lightning's input conversion walks (and deep-copies)
    dataclasses, and these lists are only merged into tensors in `on_before_batch_transfer`.
    Pickled (worker -> main process) as a few concatenated tensors instead of ~6 per sample: every
    tensor crossing a process boundary costs a file descriptor while in flight, and a few loaders x
    workers x prefetched steps of per-sample tensors can exhaust the open-file limit."""

    __slots__ = ("task", "samples", "skipped", "cfg_dropped", "position")
    FIELDS = ("input_ids", "text_labels", "gen_labels", "gen_mask", "image_mask")

    def __init__(self, task: str, samples: list[Sample] | None = None, skipped: int = 0, cfg_dropped: int = 0,
                 position: tuple[int, int] | None = None):
        self.task = task
        self.samples = samples if samples is not None else []
        self.skipped = skipped  # bad records replaced while filling this step
        self.cfg_dropped = cfg_dropped  # t2i samples given the unconditional (CFG) prompt
        self.position = position  # litdata: (shard, records read from it after this step); else None

    @property
    def turns_cut(self) -> int:
        """Conversation turns left out of this step's samples because they did not fit the context."""
        return sum(s.turns_cut for s in self.samples)

    def __repr__(self) -> str:
        return (f"TaskBatch({self.task!r}, {len(self.samples)} samples, skipped={self.skipped}, "
                f"cfg_dropped={self.cfg_dropped}, turns_cut={self.turns_cut})")

    def __getstate__(self) -> dict[str, Any]:
        s = self.samples
        state = {"task": self.task, "skipped": self.skipped, "cfg_dropped": self.cfg_dropped, "position": self.position,
                 "tasks": [x.task for x in s], "lengths": [len(x) for x in s], "turns_cut": [x.turns_cut for x in s],
                 "n_images": [0 if x.pixel_values is None else x.pixel_values.shape[0] for x in s],
                 "has_gen": [x.gen_pixels is not None for x in s]}
        if s:
            state.update({f: torch.cat([getattr(x, f) for x in s]) for f in self.FIELDS})
        if any(state["n_images"]):
            state["pixel_values"] = torch.cat([x.pixel_values for x in s if x.pixel_values is not None])
        if any(state["has_gen"]):
            state["gen_pixels"] = torch.stack([x.gen_pixels for x in s if x.gen_pixels is not None])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.task, self.skipped, self.cfg_dropped = state["task"], state["skipped"], state["cfg_dropped"]
        self.position = state["position"]
        n = len(state["lengths"])
        fields = {f: state[f].split(state["lengths"]) for f in self.FIELDS} if n else {}
        images = iter(state["pixel_values"].split([k for k in state["n_images"] if k])) if "pixel_values" in state \
            else iter(())
        gen = iter(state["gen_pixels"]) if "gen_pixels" in state else iter(())
        self.samples = [
            Sample(**{f: fields[f][i] for f in self.FIELDS}, task=state["tasks"][i], turns_cut=state["turns_cut"][i],
                   pixel_values=next(images) if state["n_images"][i] else None,
                   gen_pixels=next(gen) if state["has_gen"][i] else None)
            for i in range(n)
        ]


def seeded_rng(*keys: Any) -> random.Random:
    """An RNG from a stable hash of `keys` (Python's `hash` of str is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class ConcatSource(Source):
    """Several map-style sources as one (sizes add up: each record is equally likely)."""

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _split(self, index: int) -> tuple[Source, int]:
        k = bisect.bisect_right(self._ends, index)
        return self.sources[k], index - (self._ends[k - 1] if k else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, i = self._split(index)
        return source[i]

    def locate(self, index: int) -> str:
        source, i = self._split(index)
        return source.locate(i)


class TaskStream(IterableDataset):
    """Per-step `TaskBatch`es of `batch_size` samples of one task for one rank.

    Use with `DataLoader(stream, batch_size=None)`: the stream does its own batching, sharding and
    shuffling. Endless unless `num_steps` is given. (No `__len__`, even then: Lightning would warn that
    an IterableDataset's length is unreliable with workers, which is not the case here.)"""

    def __init__(
        self,
        task: str,
        sources: Sequence[Source] | StreamingSource,
        processor: JanusProcessor,
        batch_size: int | Sequence[int],
        *,
        rank: int = 0,
        world_size: int = 1,
        num_nodes: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_step: int = 0,
        shard_offsets: Sequence[int] | None = None,
        num_steps: int | None = None,
        cfg_dropout: float = 0.0,
        strict: bool = False,
        max_retries: int = 32,
    ):
        """`batch_size`: samples per step, or per step of a repeating cycle (step t: `batch_size[t % len]`;
        the micro-batches of an optimizer step, `lit_janus.data.mixing.task_batch_sizes`).
        `shard_offsets` (litdata sources): records already read from each litdata shard of this rank, one
        per DataLoader worker (`JanusDataModule` keeps them); None: as if this layout had run since step 0."""
        if task not in TASK_ID:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_ID)}")
        sizes = [batch_size] if isinstance(batch_size, int) else list(batch_size)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        if isinstance(sources, StreamingSource):
            self.source: Source | StreamingSource = sources
        else:
            sources = list(sources)
            if not sources:
                raise ValueError(f"the {task} stream has no sources")
            if any(isinstance(s, StreamingSource) for s in sources):
                raise ValueError(f"the {task} stream mixes a streaming (litdata) source with others: give it "
                                 "alone, or convert the others into it with `python -m lit_janus.data.optimize`")
            self.source = sources[0] if len(sources) == 1 else ConcatSource(sources)
            if len(self.source) == 0:
                raise ValueError(f"the {task} stream's sources hold no records")
        self.task, self.processor, self.sizes = task, processor, sizes
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # samples before each step of a cycle
        self.rank, self.world_size, self.num_nodes = rank, world_size, num_nodes
        self.seed, self.shuffle, self.start_step, self.num_steps = seed, shuffle, start_step, num_steps
        self.shard_offsets = None if shard_offsets is None else list(shard_offsets)
        self.cfg_dropout = cfg_dropout if task == "t2i" else 0.0
        self.strict, self.max_retries = strict, max_retries
        self._orders: dict[int, np.ndarray] = {}
        self._logged = 0

    # ---- iteration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[TaskBatch]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        steps = self._steps(worker, workers)
        if isinstance(self.source, StreamingSource):
            yield from self._iter_streaming(steps, (self.start_step + worker) % workers, workers)
        else:
            for t in steps:
                yield self.batch_at(t)

    def _steps(self, worker: int, workers: int) -> Iterator[int]:
        # DataLoader workers hand out batches round-robin, so worker j must make steps j, j+w, ...
        t = self.start_step + worker
        end = None if self.num_steps is None else self.start_step + self.num_steps
        while end is None or t < end:
            yield t
            t += workers

    def size_at(self, step: int) -> int:
        return self.sizes[step % len(self.sizes)]

    def batch_at(self, step: int) -> TaskBatch:
        """This rank's samples of `step` (map-style sources)."""
        out = TaskBatch(self.task)
        cycles, i = divmod(step, len(self.sizes))
        before = cycles * self._starts[-1] + self._starts[i]  # this rank's samples in the steps before
        for k in range(self.sizes[i]):
            g = (before + k) * self.world_size + self.rank
            sample, skipped, dropped = self.sample_at(g)
            out.samples.append(sample)
            out.skipped += skipped
            out.cfg_dropped += dropped
        return out

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a step straddles at most two epochs
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, TASK_ID[self.task], epoch])
            n = len(self.source)  # int32 halves the per-worker copy (ImageNet: 5 MB; 10M records: 40 MB)
            self._orders[epoch] = rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64)
        return self._orders[epoch]

    def sample_at(self, g: int) -> tuple[Sample, int, bool]:
        """(sample, bad records skipped, CFG-dropped?) for global stream position `g`."""
        n = len(self.source)
        epoch, i = divmod(g, n)
        index = int(self._order(epoch)[i]) if self.shuffle else i
        replacements = None
        for skipped in range(self.max_retries + 1):
            try:
                drop = self._drop(epoch, index)
                return to_sample(self.task, self.processor, self.source[index], drop, epoch), skipped, drop
            except RECORD_ERRORS as e:
                self._bad(self.source.locate(index), e)
                error = e
            replacements = replacements or seeded_rng(self.seed, "replace", self.task, g)
            index = replacements.randrange(n)
        raise BadSampleError(f"{self.max_retries + 1} bad records in a row in the {self.task} stream; "
                             f"the last one: {error}")

    def _drop(self, epoch: int, key: Any) -> bool:
        # seeded per (epoch, record): reproducible whatever the worker, rank or world size
        return bool(self.cfg_dropout) and seeded_rng(self.seed, "cfg", epoch, key).random() < self.cfg_dropout

    def _bad(self, where: str, error: Exception) -> None:
        message = f"bad {self.task} record ({where}): {error}"
        if self.strict:
            raise BadSampleError(message + "  [strict: true; set strict: false to skip and count such records]") \
                from error
        self._logged += 1
        if self._logged <= MAX_LOGGED:
            log.warning("skipping %s%s", message,
                        "  (further bad records of this stream are only counted)" if self._logged == MAX_LOGGED else "")

    # ---- litdata --------------------------------------------------------------------------------
    def _iter_streaming(self, steps: Iterator[int], shard: int, shards: int) -> Iterator[TaskBatch]:
        # this worker makes steps t = shard (mod shards), so it reads only that shard
        source = self.source
        offsets = self.shard_offsets
        if offsets is None:
            offsets = steady_offsets(self.sizes, self.start_step, shards)
        if len(offsets) != shards:
            raise ValueError(f"the {self.task} stream has shard_offsets for {len(offsets)} DataLoader workers but "
                             f"runs in {shards}; give one per worker (JanusDataModule redistributes them)")
        where = dict(seed=self.seed, rank=self.rank, world_size=self.world_size, num_nodes=self.num_nodes,
                     shard=shard, num_shards=shards)
        read = offsets[shard]
        records = source.records(**where, skip=read)
        spares = None  # replacements for bad records, started on the first one
        for t in steps:
            out = TaskBatch(self.task)
            for _ in range(self.size_at(t)):
                item = next(records)
                read += 1
                for attempt in range(self.max_retries + 1):
                    epoch, record = item
                    index = record.pop("_index", None) if isinstance(record, dict) else None
                    key = index if index is not None else f"{self.rank}/{shard}/{read}/{attempt}"  # CFG draw
                    try:
                        if isinstance(record, Exception):
                            raise record
                        drop = self._drop(epoch, key)
                        out.samples.append(to_sample(self.task, self.processor, record, drop, epoch))
                        out.cfg_dropped += drop
                        break
                    except RECORD_ERRORS as e:
                        self._bad(source.locate(index if index is not None else -1), e)
                        out.skipped += 1
                        error = e
                    if spares is None:  # another order of the same data: reading on in `records` would
                        spares = source.records(**{**where, "seed": self.seed + 1})  # shift every later step
                    item = next(spares)
                else:
                    raise BadSampleError(f"{self.max_retries + 1} bad records in a row in the {self.task} "
                                         f"stream; the last one: {error}")
            out.position = (shard, read)
            yield out
