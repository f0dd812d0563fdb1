"""One training sequence (`Sample`) and the collation of many into a padded or packed batch.

Every position of a batch says, on its own, what enters the model and what it must predict:
- `input_ids`   the text id, or (where `gen_mask`) a VQ code that enters through gen_embed/gen_aligner;
- `image_mask`  placeholder positions that receive SigLIP+aligner features (understanding);
- `text_labels` the token `lm_head` must predict *from this position* (-100: none);
- `gen_labels`  the code `gen_head` must predict from this position (-100: none);
- `task_ids`    which stream the position's document came from (0 pad, 1 und, 2 text, 3 t2i);
- `encode_mask` (with `gen_pixels` only) the documents whose codes `fill_codes` still has to write.
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
    turns_cut: int = 0  # conversation turns left out because they did not fit the context

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def collate(samples: list[Sample], pad_id: int, pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """Batch samples into rows: one sample per row, right-padded (`pack_length=None`), or packed
    first-fit into rows of exactly `pack_length` tokens. In packed rows position ids restart at 0
    for each document; the model turns that into a block-diagonal causal mask, so documents never
    attend to each other (transformers derives the mask from the position ids)."""
    if not samples:
        raise ValueError("collate() got no samples")
    lengths = [len(s) for s in samples]
    if pack_length is None:
        rows = [[i] for i in range(len(samples))]
        width = max(lengths)
    else:
        too_long = [n for n in lengths if n > pack_length]
        if too_long:
            raise ValueError(f"sample of {too_long[0]} tokens does not fit pack_length={pack_length}")
        rows = first_fit(lengths, pack_length)
        width = pack_length

    # one copy per field for the whole batch (a per-sample slice copy cost ~8 tensor ops a sample,
    # in the training process, at every step): each sample's tokens go to flat positions
    # row * width + offset .. + length
    order = [i for row in rows for i in row]  # row-major: the order masked_scatter fills images in
    starts, last_start = [], []  # flat start of each document; each row's last document's offset
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            starts.append(r * width + at)
            at += lengths[i]
        last_start.append(at - lengths[row[-1]])
    B, n_tokens = len(rows), sum(lengths)
    lens = torch.tensor([lengths[i] for i in order])
    doc_start = torch.cumsum(lens, 0) - lens  # where each document begins in the concatenation
    within = torch.arange(n_tokens) - torch.repeat_interleave(doc_start, lens)
    dest = torch.repeat_interleave(torch.tensor(starts), lens) + within
    ordered = [samples[i] for i in order]

    def scatter(name: str, fill, dtype) -> torch.Tensor:
        flat = torch.full((B * width,), fill, dtype=dtype)
        flat[dest] = torch.cat([getattr(s, name) for s in ordered]).to(dtype)
        return flat.view(B, width)

    # Padding continues the last document's positions: causal attention never lets a real token
    # see a later pad, and an unbroken run keeps plain (non-packed) rows on the fast is_causal path.
    position_ids = (torch.arange(width)[None, :] - torch.tensor(last_start)[:, None]).reshape(-1)
    position_ids[dest] = within
    task_ids = torch.zeros(B * width, dtype=torch.long)
    task_ids[dest] = torch.repeat_interleave(torch.tensor([TASK_ID[s.task] for s in ordered]), lens)
    out = {
        "input_ids": scatter("input_ids", pad_id, torch.long),
        "position_ids": position_ids.view(B, width),
        "text_labels": scatter("text_labels", IGNORE, torch.long),
        "gen_labels": scatter("gen_labels", IGNORE, torch.long),
        "gen_mask": scatter("gen_mask", False, torch.bool),
        "image_mask": scatter("image_mask", False, torch.bool),
        "task_ids": task_ids.view(B, width),
    }
    pixels = [s.pixel_values for s in ordered if s.pixel_values is not None]
    gen_pixels = [s.gen_pixels for s in ordered if s.gen_pixels is not None]
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    if gen_pixels:
        out["gen_pixels"] = torch.stack(gen_pixels)
        # the documents whose codes are placeholders until fill_codes: t2i samples with pre-extracted
        # codes may share the batch (a codes manifest next to an image folder)
        pending = torch.tensor([s.gen_pixels is not None for s in ordered])
        encode_mask = torch.zeros(B * width, dtype=torch.bool)
        encode_mask[dest] = torch.repeat_interleave(pending, lens)
        out["encode_mask"] = encode_mask.view(B, width)
    return out


def first_fit(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Indices of `lengths` packed first-fit into rows of `pack_length` (each row keeps its
    samples in order). A row whose room is below the shortest sample can take nothing more, so it
    leaves the search: the scan is over the few rows still open, not over all of them (at 512
    samples a step the full scan was most of the training process's per-step data time)."""
    shortest = min(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[int] = []  # ascending, so the first that fits is first-fit's choice
    for i, n in enumerate(lengths):
        for j in open_rows:
            if n <= room[j]:
                break
        else:
            j = len(rows)
            rows.append([])
            room.append(pack_length)
            open_rows.append(j)
        rows[j].append(i)
        room[j] -= n
        if room[j] < shortest:
            open_rows.remove(j)
    return rows


def fill_codes(batch: dict[str, torch.Tensor], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Write the VQ codes ([n_images, N] long, in batch order) of the `gen_pixels` images into a collated
    batch, at the documents `encode_mask` marks: each image has N-1 input positions (code0..code_{N-2})
    and N target positions. Other t2i documents keep their pre-extracted codes."""
    pending = batch["encode_mask"]
    inputs, targets = batch["gen_mask"] & pending, (batch["gen_labels"] != IGNORE) & pending
    if int(inputs.sum()) != codes.shape[0] * (codes.shape[1] - 1) or int(targets.sum()) != codes.numel():
        raise ValueError(f"{tuple(codes.shape)} codes do not match the batch's image-code positions")
    batch = dict(batch)
    batch["input_ids"] = batch["input_ids"].masked_scatter(inputs, codes[:, :-1].contiguous())
    batch["gen_labels"] = batch["gen_labels"].masked_scatter(targets, codes.contiguous())
    del batch["gen_pixels"], batch["encode_mask"]
    return batch
