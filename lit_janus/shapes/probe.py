"""Linear probes of the understanding encoder: what its patch features still say, object by object.

Janus feeds the LLM SigLIP's last-layer patch features through an MLP aligner, and the LLM's RoPE
only rotates queries and keys: a patch's *value* tells the LLM where that patch is only if the
encoder kept it there. A left/right question is unanswerable from features that forgot it.

For each object of held-out ShapesWorld scenes, this takes the feature of the patch under the
object's centre and fits a linear classifier (logistic regression, fit on 80% of the objects,
scored on the rest) for the patch's column and row, the object's colour and its shape.
Chance / majority-class rates are printed beside each score.

    python -m lit_janus.shapes.probe checkpoints/shapes/stage0/vision.safetensors
    python -m lit_janus.shapes.probe random   # the same encoder at its random initialisation
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from lit_janus.config import Config

PROBES = ("column", "row", "color", "shape")


def object_features(vision, processor, n_scenes: int, seed: int, grid: int) -> tuple[torch.Tensor, dict]:
    """[objects, width] features of each object's centre patch, and its labels per probe."""
    from lit_janus.shapes.world import COLORS, SHAPES, ShapesWorld, random_scene

    world, rng = ShapesWorld(seed=seed, image_size=processor.image.image_size), random.Random(seed)
    feats, labels = [], {k: [] for k in PROBES}
    colors = list(COLORS)
    for start in range(0, n_scenes, 64):
        scenes = [random_scene(rng) for _ in range(min(64, n_scenes - start))]
        pixels = torch.stack([processor.understanding_pixels(world.render(s)) for s in scenes])
        with torch.no_grad():
            hidden = vision(pixels).last_hidden_state  # [B, grid*grid, width]
        for b, scene in enumerate(scenes):
            for o in scene.objects:
                row, col = min(int(o.y * grid), grid - 1), min(int(o.x * grid), grid - 1)
                feats.append(hidden[b, row * grid + col])
                for k, v in zip(PROBES, (col, row, colors.index(o.color), SHAPES.index(o.shape))):
                    labels[k].append(v)
    return torch.stack(feats), {k: torch.tensor(v) for k, v in labels.items()}


def linear_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300, train_fraction: float = 0.8) -> float:
    """Held-out accuracy of a logistic regression on standardised features (full-batch Adam)."""
    n = int(len(x) * train_fraction)
    mean, std = x[:n].mean(0), x[:n].std(0) + 1e-5
    x = (x - mean) / std
    classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(x[:n] @ w + b, y[:n]).backward()
        opt.step()
    with torch.no_grad():
        return ((x[n:] @ w + b).argmax(1) == y[n:]).float().mean().item()


def probe(vision_weights: str, config: str | Config = "shapes", n_scenes: int = 1500, seed: int = 70001) -> dict:
    """{probe: {accuracy, majority}} for the encoder in `vision_weights` (vision.safetensors, a stage-0b
    Lightning checkpoint, or `random` for the seeded random initialisation)."""
    from transformers import JanusVisionModel

    from lit_janus.checkpoint import processor_for
    from lit_janus.shapes.assemble import load_part

    cfg = Config.from_name(config) if isinstance(config, str) else config
    torch.manual_seed(0)
    vision = JanusVisionModel(cfg.to_hf().vision_config)
    if vision_weights != "random":
        vision.load_state_dict(load_part(vision_weights, "vision."), strict=True)
    vision.eval()
    grid = cfg.image_size // cfg.patch_size
    x, labels = object_features(vision, processor_for("shapes", cfg), n_scenes, seed, grid)
    n = int(len(x) * 0.8)
    return {k: {"accuracy": linear_probe(x, y), "majority": torch.bincount(y[n:]).max().item() / (len(y) - n)}
            for k, y in labels.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lit_janus.shapes.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("vision", help="vision.safetensors, a stage-0b .ckpt, or `random`")
    p.add_argument("--config", default="shapes", help="model preset of the encoder (default: shapes)")
    p.add_argument("--scenes", type=int, default=1500, help="held-out scenes (1-4 objects each)")
    p.add_argument("--seed", type=int, default=70001, help="world seed of the probe scenes")
    a = p.parse_args(argv)
    result = probe(a.vision, a.config, a.scenes, a.seed)
    print("| probe (object-centre patch) | accuracy | majority class |\n|---|---|---|")
    for k, r in result.items():
        print(f"| {k} | {r['accuracy']:.3f} | {r['majority']:.3f} |")
    return result


if __name__ == "__main__":
    main()
