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
) -> dict[str, list[int]]:
    """Per-device sample counts of every task in each of the `accumulate_grad_batches` micro-batches of an
    optimizer step (all 0 for switched-off tasks).

    `global_batch_size` samples per optimizer step = world_size x accumulate_grad_batches x the per-device
    micro-batch, and the ratio holds per optimizer step: each device's step (all its micro-batches) is
    split by `ratio`, which must give whole samples (or this raises with batch sizes that would), and
    `round_ratio=True` rounds that split instead (largest remainder), e.g. 2:3:5 of 64 -> 13/19/32.
    The micro-batches then share each task's samples as evenly as they can (13 over 4 micro-batches:
    4/3/3/3), each of the same size, and every device gets the same counts. Every micro-batch holds every
    active task: one without a task would leave that task's modules out of its forward (under DDP an
    error when they train)."""
    r = ratio.as_dict() if isinstance(ratio, TaskRatio) else dict(ratio)
    unknown = set(r) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)} in ratio; tasks are {list(TASKS)}")
    r = {t: Fraction(r.get(t, 0)).limit_denominator(10_000) for t in TASKS}
    ratio_str = ":".join(_fmt(r[t]) for t in TASKS)
    if any(v < 0 for v in r.values()) or not any(r.values()):
        raise ValueError(f"ratio needs non-negative values and at least one positive task, got "
                         f"{ratio_str} (und:text:t2i)")
    micro = world_size * accumulate_grad_batches
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1 (samples per optimizer step), got {global_batch_size}")
    if global_batch_size % micro:
        raise ValueError(
            f"global_batch_size {global_batch_size} does not split over world_size {world_size} x "
            f"accumulate_grad_batches {accumulate_grad_batches} = {micro} micro-batches; use a multiple of {micro}"
        )
    per_device = global_batch_size // world_size  # one device's samples per optimizer step
    total = sum(r.values())
    shares = {t: per_device * v / total for t, v in r.items()}
    rounded = {t: int(s) for t, s in shares.items()}  # floor, then hand out the rest by remainder
    for t in sorted(TASKS, key=lambda t: shares[t] - rounded[t], reverse=True)[: per_device - sum(rounded.values())]:
        rounded[t] += 1

    def starving(split: Mapping[str, int]) -> list[str]:  # every micro-batch must hold every active task
        return [t for t in TASKS if r[t] > 0 and split[t] < accumulate_grad_batches]

    if all(s.denominator == 1 for s in shares.values()):
        step = {t: int(s) for t, s in shares.items()}
    elif round_ratio:
        step = rounded
    else:
        # smallest per-device total that splits exactly: lcm of the reduced ratio's denominators
        unit = lcm(*((v / total).denominator for v in r.values() if v > 0))
        size = lcm(unit * world_size, micro)  # and still splits into micro-batches
        # and gives the smallest task at least one sample in each micro-batch
        fewest = min(v / total for v in r.values() if v > 0)
        least = -(-Fraction(accumulate_grad_batches * world_size) / fewest // size) * size
        lower, upper = (global_batch_size // size) * size, (global_batch_size // size + 1) * size
        suggestions = " or ".join(str(x) for x in dict.fromkeys((lower, max(upper, least))) if x >= max(least, 1))
        raise ValueError(
            f"ratio {ratio_str} (und:text:t2i) of {per_device} samples per device and optimizer step "
            f"(global_batch_size {global_batch_size} / world_size {world_size}) is "
            f"{' / '.join(_fmt(shares[t]) for t in TASKS)}: not whole samples. Use a global_batch_size that is a "
            f"multiple of {size} (e.g. {suggestions})"
            + ("" if starving(rounded) else ", or set round_ratio: true to round the split per device") + "."
        )
    starved = starving(step)
    if starved and accumulate_grad_batches == 1:
        raise ValueError(f"{per_device} samples per device are too few for ratio {ratio_str}: {starved} would get none")
    if starved:
        raise ValueError(
            f"ratio {ratio_str} of {per_device} samples per device and optimizer step gives "
            + ", ".join(f"{t} {step[t]}" for t in starved) + f": too few for {accumulate_grad_batches} micro-batches "
            "that each hold every task. Use fewer accumulate_grad_batches (larger micro-batches) or a larger "
            "global_batch_size.")
    return spread(step, accumulate_grad_batches)


def spread(step: Mapping[str, int], parts: int) -> dict[str, list[int]]:
    """Each task's samples of one step over `parts` micro-batches of equal size (the total must divide):
    every task gets floor or ceil of its share in each, and the leftovers go round in task order, so no
    micro-batch gets two of one task's (13/19/32 over 4: und 4/3/3/3, text 4/5/5/5, t2i 8/8/8/8)."""
    sizes = {t: [n // parts] * parts for t, n in step.items()}
    slot = 0
    for t, n in step.items():
        for _ in range(n % parts):
            sizes[t][slot % parts] += 1
            slot += 1
    return sizes


def merge(parts: Mapping[str, TaskBatch | None], pad_id: int,
          pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """One collated batch (`lit_janus.batch.collate`, optionally packed) from one step's task batches,
    plus 0-dim counts for logging: `samples_{task}`, `skipped_{task}` (bad records replaced),
    `turns_cut_{task}` (conversation turns beyond the context), `cfg_dropped` (t2i samples with the
    unconditional prompt) and `num_tokens` (non-padding tokens)."""
    samples, counts = [], {}
    for task in TASKS:  # fixed task order: und, text, t2i
        part = parts.get(task)
        samples += part.samples if part is not None else []
        counts[f"samples_{task}"] = len(part.samples) if part is not None else 0
        counts[f"skipped_{task}"] = part.skipped if part is not None else 0
        counts[f"turns_cut_{task}"] = part.turns_cut if part is not None else 0
    counts["cfg_dropped"] = parts["t2i"].cfg_dropped if parts.get("t2i") is not None else 0
    counts["num_tokens"] = sum(len(s) for s in samples)
    batch = collate(samples, pad_id, pack_length)
    batch.update({k: torch.tensor(v, dtype=torch.long) for k, v in counts.items()})
    return batch
