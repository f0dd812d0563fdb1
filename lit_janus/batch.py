"""One training sequence (`Sample`) and the collation of many into a padded or packed batch.

Every position of a batch says, on its own, what enters the model and what it must predict:
- `input_ids`   the text id, or (where `gen_mask`) a VQ code that enters through gen_embed/gen_aligner;
- `image_mask`  placeholder positions that receive SigLIP+aligner features (understanding);
- `text_labels` the token `lm_head` must predict *from this position* (-100: none);
- `gen_labels`  the code `gen_head` must predict from this position (-100: none);
- `task_ids`    which stream the position's document came from (0 pad, 1 und, 2 text, 3 t2i).
Labels are stored already shifted, so the model never shifts: that is where the classic
"first image code is never supervised" off-by-one comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
TASKS = ("und", "text", "t2i")
TASK_ID = {name: i + 1 for i, name in enumerate(TASKS)}


@dataclass
class Sample:
    input_ids: torch.Tensor  # [L] long
    text_labels: torch.Tensor  # [L] long
    gen_labels: torch.Tensor  # [L] long
    gen_mask: torch.Tensor  # [L] bool
    image_mask: torch.Tensor  # [L] bool
    task: str
    pixel_values: torch.Tensor | None = None  # [n_images, 3, S, S] for understanding
    gen_pixels: torch.Tensor | None = None  # [3, S, S] in [-1, 1]: a t2i target still to be VQ-encoded

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def collate(samples: list[Sample], pad_id: int, pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """Batch samples into rows: one sample per row, right-padded (`pack_length=None`), or packed
    first-fit into rows of exactly `pack_length` tokens. In packed rows position ids restart at 0
    for each document; the model turns that into a block-diagonal causal mask, so documents never
    attend to each other (transformers derives the mask from the position ids)."""
    if not samples:
        raise ValueError("collate() got no samples")
    if pack_length is None:
        rows = [[s] for s in samples]
        width = max(len(s) for s in samples)
    else:
        too_long = [len(s) for s in samples if len(s) > pack_length]
        if too_long:
            raise ValueError(f"sample of {too_long[0]} tokens does not fit pack_length={pack_length}")
        rows, room = [], []
        for s in samples:  # first fit, order-preserving within a row
            for i, free in enumerate(room):
                if len(s) <= free:
                    rows[i].append(s)
                    room[i] -= len(s)
                    break
            else:
                rows.append([s])
                room.append(pack_length - len(s))
        width = pack_length

    B = len(rows)
    out = {
        "input_ids": torch.full((B, width), pad_id, dtype=torch.long),
        "position_ids": torch.zeros((B, width), dtype=torch.long),
        "text_labels": torch.full((B, width), IGNORE, dtype=torch.long),
        "gen_labels": torch.full((B, width), IGNORE, dtype=torch.long),
        "gen_mask": torch.zeros((B, width), dtype=torch.bool),
        "image_mask": torch.zeros((B, width), dtype=torch.bool),
        "task_ids": torch.zeros((B, width), dtype=torch.long),
    }
    pixels, gen_pixels = [], []
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            sl = slice(at, at + len(s))
            out["input_ids"][r, sl] = s.input_ids
            out["position_ids"][r, sl] = torch.arange(len(s))
            out["text_labels"][r, sl] = s.text_labels
            out["gen_labels"][r, sl] = s.gen_labels
            out["gen_mask"][r, sl] = s.gen_mask
            out["image_mask"][r, sl] = s.image_mask
            out["task_ids"][r, sl] = TASK_ID[s.task]
            if s.pixel_values is not None:
                pixels.append(s.pixel_values)  # row-major order == the order masked_scatter fills
            if s.gen_pixels is not None:
                gen_pixels.append(s.gen_pixels)
            at += len(s)
        # Padding continues the last document's positions: causal attention never lets a real
        # token see a later pad, and an unbroken run keeps plain (non-packed) rows on the fast
        # is_causal attention path.
        out["position_ids"][r, at:] = torch.arange(at, width) - (at - len(row[-1]))
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    if gen_pixels:
        if len(gen_pixels) != sum(s.task == "t2i" for s in samples):
            raise ValueError("a batch must not mix t2i samples with codes and with pixels still to encode")
        out["gen_pixels"] = torch.stack(gen_pixels)
    return out


def fill_codes(batch: dict[str, torch.Tensor], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Write VQ codes ([n_images, N] long, in batch order) of `gen_pixels` images into a collated
    batch: each image has N-1 input positions (code0..code_{N-2}) and N target positions."""
    gen_mask, targets = batch["gen_mask"], batch["gen_labels"] != IGNORE
    if int(gen_mask.sum()) != codes.shape[0] * (codes.shape[1] - 1) or int(targets.sum()) != codes.numel():
        raise ValueError(f"{tuple(codes.shape)} codes do not match the batch's image-code positions")
    batch = dict(batch)
    batch["input_ids"] = batch["input_ids"].masked_scatter(gen_mask, codes[:, :-1].contiguous())
    batch["gen_labels"] = batch["gen_labels"].masked_scatter(targets, codes.contiguous())
    batch.pop("gen_pixels", None)
    return batch
