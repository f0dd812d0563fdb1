"""The per-step task mix: per-device batch sizes from the stage ratio, and the merge of the three
task streams' samples into one collated batch (one forward pass per step)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import lcm

import torch

from lit_janus.batch import TASKS, collate
from lit_janus.data.stream import TaskBatch


@dataclass(frozen=True)
class TaskRatio:
    """Samples of each task per step, relative (Janus-Pro Table 2: Stage I 1:0:3, II 2:3:5, III 5:1:4).
    A task at 0 is switched off."""

    und: float = 1.0
    """Image understanding (image + conversation)."""
    text: float = 0.0
    """Pure text."""
    t2i: float = 3.0
    """Text-to-image generation."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.4g}"


def task_batch_sizes(
    global_batch_size: int,
    ratio: TaskRatio | Mapping[str, float],
    world_size: int = 1,
    accumulate_grad_batches: int = 1,
    round_ratio: bool = False,
) -> dict[str, int]:
    """Per-device, per-micro-step sample counts of every task (0 for switched-off tasks).

    `global_batch_size` samples per optimizer step = world_size x accumulate_grad_batches x the
    per-device total, split by `ratio`. Every count must be a whole number, on every device the same,
    or this raises with the numbers that would work. `round_ratio=True` instead rounds the per-device
    split to whole samples (largest remainder), e.g. 2:3:5 of 64 -> 13/19/32."""
    r = ratio.as_dict() if isinstance(ratio, TaskRatio) else dict(ratio)
    unknown = set(r) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)} in ratio; tasks are {list(TASKS)}")
    r = {t: Fraction(r.get(t, 0)).limit_denominator(10_000) for t in TASKS}
    if any(v < 0 for v in r.values()) or not any(r.values()):
        raise ValueError(f"ratio needs non-negative values and at least one positive task, got "
                         f"{':'.join(_fmt(r[t]) for t in TASKS)} (und:text:t2i)")
    devices = world_size * accumulate_grad_batches
    if global_batch_size < 1 or global_batch_size % devices:
        raise ValueError(
            f"global_batch_size {global_batch_size} does not split over world_size {world_size} x "
            f"accumulate_grad_batches {accumulate_grad_batches} = {devices} micro-batches; use a multiple of {devices}"
        )
    per_device = global_batch_size // devices
    total = sum(r.values())
    shares = {t: per_device * v / total for t, v in r.items()}
    if all(s.denominator == 1 for s in shares.values()):
        return {t: int(s) for t, s in shares.items()}
    if round_ratio:
        sizes = {t: int(s) for t, s in shares.items()}  # floor, then hand out the rest by remainder
        for t in sorted(TASKS, key=lambda t: shares[t] - sizes[t], reverse=True)[: per_device - sum(sizes.values())]:
            sizes[t] += 1
        starved = [t for t in TASKS if r[t] > 0 and sizes[t] == 0]
        if starved:
            raise ValueError(f"{per_device} samples per device are too few for ratio "
                             f"{':'.join(_fmt(r[t]) for t in TASKS)}: {starved} would get none")
        return sizes
    # smallest per-device total that splits exactly: lcm of the reduced ratio's denominators
    unit = lcm(*((v / total).denominator for v in r.values() if v > 0))
    step = unit * devices
    lower, upper = (global_batch_size // step) * step, (global_batch_size // step + 1) * step
    suggestions = " or ".join(str(x) for x in (lower, upper) if x > 0)
    raise ValueError(
        f"ratio {':'.join(_fmt(r[t]) for t in TASKS)} (und:text:t2i) of {per_device} samples per device "
        f"(global_batch_size {global_batch_size} / {devices} micro-batches) is "
        f"{' / '.join(_fmt(shares[t]) for t in TASKS)}: not whole samples. Use a global_batch_size that is a "
        f"multiple of {step} (e.g. {suggestions}), or set round_ratio: true to round the split per device."
    )


def merge(parts: Mapping[str, TaskBatch | None], pad_id: int,
          pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """One collated batch (`lit_janus.batch.collate`, optionally packed) from one step's task batches,
    plus 0-dim counts for logging: `samples_{task}`, `skipped_{task}` (bad records replaced),
    `cfg_dropped` (t2i samples with the unconditional prompt) and `num_tokens` (non-padding tokens)."""
    samples, counts = [], {}
    for task in TASKS:  # fixed task order: und, text, t2i
        part = parts.get(task)
        samples += part.samples if part is not None else []
        counts[f"samples_{task}"] = len(part.samples) if part is not None else 0
        counts[f"skipped_{task}"] = part.skipped if part is not None else 0
    counts["cfg_dropped"] = parts["t2i"].cfg_dropped if parts.get("t2i") is not None else 0
    counts["num_tokens"] = sum(len(s) for s in samples)
    batch = collate(samples, pad_id, pack_length)
    batch.update({k: torch.tensor(v, dtype=torch.long) for k, v in counts.items()})
    return batch
