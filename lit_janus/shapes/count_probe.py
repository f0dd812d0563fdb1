"""Does the generator keep count? A teacher-forced probe of counting prompts.

ShapesWorld's generators overdraw: asked for three or four shapes, a trained model draws one too many
in about a third of its images (`evaluate_model --failures`). Images are drawn in raster order, one
VQ token row after another, so by the bottom rows the model must know how many shapes it has drawn
above. This probe tests exactly that. It takes ground-truth counting scenes whose shapes all end
within the top `max_rows` token rows, VQ-encodes them, and hands the model those top rows as a fixed
prefix: every shape asked for is already drawn, and below it the real scene is plain background.
The model draws the remaining rows (CFG and sampling as in evaluation) under two prompts:

- **complete**: the prompt asks for the N shapes the prefix holds. A model that keeps count adds none.
- **one short**: the prompt asks for N + 1. It should add exactly one.

Both conditions continue each scene with the same noise, so they differ only in the prompt. A third
row, **reconstruction**, decodes the scene's own codes: what the detector reads in the prefix itself,
which should add nothing (its misses are the probe's noise floor).

    python -m lit_janus.shapes.count_probe runs/shapes_full_cpu_decay/attr3_stage3/checkpoints/last.ckpt \\
        --cfg-weight 3 --per 20 --max-rows 5
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lit_janus.shapes.world import COUNTS, NUMBER_WORDS, SHAPES, Scene, make_t2i, pixel_box

CONDITIONS = ("reconstruction", "complete", "one short")


def last_row(scene: Scene, image_size: int, grid: int) -> int:
    """The last token row any object of `scene` touches (by the pixel box `world.render` draws it in)."""
    return max(pixel_box(o, image_size)[3] // (image_size // grid) for o in scene.objects)


def top_scenes(n: int, shape: str, k: int, max_rows: int, *, image_size: int, grid: int,
               seed: int) -> list[tuple[Scene, int]]:
    """`k` training-distribution counting scenes of `n` `shape`s (`world.make_t2i`, so colours and
    sizes are drawn as in training) whose objects all end within the top `max_rows` token rows, each
    with the number of rows that holds them."""
    if not 1 <= max_rows < grid:
        raise ValueError(f"max_rows must leave at least one row to draw: 1 <= max_rows < {grid}, got {max_rows}")
    rng, out = random.Random(f"count-probe/{seed}/{n}/{shape}"), []
    for _ in range(200_000):
        _, meta, scene = make_t2i("counting", rng)
        inc = meta["include"][0]
        if inc["count"] == n and inc["class"] == shape:
            rows = last_row(scene, image_size, grid) + 1
            if rows <= max_rows:
                out.append((scene, rows))
                if len(out) == k:
                    return out
    raise RuntimeError(f"found only {len(out)} scenes of {n} {shape}s within {max_rows} rows; raise max_rows")


def shapes_added(image, shape: str, n: int) -> tuple[int, int]:
    """(objects of `shape` beyond the `n` the prefix holds, objects of any other kind) in `image`."""
    from lit_janus.shapes.evaluate import detect

    found = detect(image)
    same = sum(d.shape == shape for d in found)
    return same - n, len(found) - same


@dataclass
class Cell:
    """What one condition added, over the scenes of one N."""

    added: Counter = field(default_factory=Counter)  # same-kind shapes added -> images
    other: int = 0  # shapes of another kind (or none) added, in all
    rows: list[int] = field(default_factory=list)  # prefix rows per image

    def add(self, same: int, other: int, rows: int) -> None:
        self.added[same] += 1
        self.other += other
        self.rows.append(rows)

    def as_dict(self) -> dict:
        return {"added": dict(sorted(self.added.items())), "other": self.other, "images": len(self.rows),
                "mean_rows": sum(self.rows) / max(len(self.rows), 1)}


@torch.no_grad()
def count_probe(model, processor, *, per: int = 20, max_rows: int = 5, cfg_weight: float = 5.0,
                temperature: float = 1.0, counts: Sequence[int] = COUNTS, seed: int = 0) -> dict[tuple[str, int], Cell]:
    """{(condition, N): Cell} over `per` scenes for each N in `counts` and each shape (so 3 x `per`
    images per cell). "one short" is skipped where N + 1 is past the largest count ShapesWorld asks for."""
    from PIL import Image

    from lit_janus.generate import decode_images, generate_reference
    from lit_janus.sampling import seed_key
    from lit_janus.shapes.world import render

    size, grid = model.config.image_size, model.config.grid_size
    dev = model.llm.embed_tokens.weight.device
    cells: dict[tuple[str, int], Cell] = {}
    for n in counts:
        for s, shape in enumerate(SHAPES):
            scenes = top_scenes(n, shape, per, max_rows, image_size=size, grid=grid, seed=seed)
            pixels = torch.stack([processor.generation_pixels(render(sc, size)) for sc, _ in scenes]).to(dev)
            codes = model.encode_images(pixels)
            rows = [r for _, r in scenes]
            keys = [seed_key(seed, (n * len(SHAPES) + s) * per + i) for i in range(per)]
            drawn = {"reconstruction": codes}
            for name, asked in (("complete", n), ("one short", n + 1)):
                if asked > max(COUNTS):
                    continue
                ids = processor.t2i_prompt_ids(f"a photo of {NUMBER_WORDS[asked]} {shape}s")
                drawn[name] = generate_reference(
                    model, ids, processor.unconditional_ids(ids), keys, cfg_weight=cfg_weight,
                    temperature=temperature, prefix=codes, prefix_len=[r * grid for r in rows])
            for name, c in drawn.items():
                images = decode_images(model, c).numpy()
                cell = cells.setdefault((name, n), Cell())
                for img, r in zip(images, rows):
                    cell.add(*shapes_added(Image.fromarray(img), shape, n), r)
    return cells


def format_table(cells: dict[tuple[str, int], Cell]) -> str:
    lines = ["| condition | prefix holds | prompt asks | images | mean prefix rows | added 0 | added 1 | added 2+ "
             "| fewer | shapes of another kind |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, n), c in sorted(cells.items(), key=lambda kv: (CONDITIONS.index(kv[0][0]), kv[0][1])):
        k = len(c.rows)
        bins = Counter()  # added shapes binned as the columns: fewer (-1), 0, 1, 2+
        for added, images in c.added.items():
            bins[max(-1, min(added, 2))] += images
        asked = "-" if name == "reconstruction" else n + (name == "one short")
        shares = " | ".join(f"{bins[b] / k:.2f}" for b in (0, 1, 2, -1))
        lines.append(f"| {name} | {n} | {asked} | {k} | {sum(c.rows) / k:.1f} | {shares} | {c.other} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m lit_janus.shapes.count_probe",
        description="Does a ShapesWorld generator keep count? Continue ground-truth counting scenes whose shapes "
                    "all lie in the top rows, under a prompt asking for the shapes drawn (complete) and for one "
                    "more (one short), and count the shapes the model adds.")
    p.add_argument("checkpoint", help="a ShapesWorld model: pretrained directory or Lightning .ckpt")
    p.add_argument("--per", type=int, default=20, help="scenes per (count, shape): 3 x PER images per table row")
    p.add_argument("--max-rows", type=int, default=5,
                   help="the prefix: scenes whose shapes all end within this many token rows (of 8)")
    p.add_argument("--cfg-weight", type=float, default=5.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)

    from lit_janus.checkpoint import load_any

    model, processor = load_any(a.checkpoint, device=a.device)
    cells = count_probe(model.eval(), processor, per=a.per, max_rows=a.max_rows, cfg_weight=a.cfg_weight,
                        temperature=a.temperature, seed=a.seed)
    print(format_table(cells))
    return {f"{name}/{n}": c.as_dict() for (name, n), c in cells.items()}


if __name__ == "__main__":
    main()
