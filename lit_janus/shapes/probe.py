"""Linear probes of the understanding features: what each object's patch still says about it.

Janus feeds the LLM SigLIP's last-layer patch features through an MLP aligner, and the LLM's RoPE
only rotates queries and keys: an image token's *value* says where its patch is only if the
encoder and the aligner kept that. Without it, a left/right question has to be answered from
attention patterns alone.

For each object of held-out ShapesWorld scenes, this takes the feature of the patch under the
object's centre and fits a linear classifier (logistic regression, fit on 80% of the objects,
scored on the rest) for the patch's column and row, the object's colour and its shape; the
majority-class rate is printed beside each score. A full model checkpoint (after Stage I, II, ...)
gets two columns: the encoder's output and what the LLM receives, the aligner's output.

    python -m lit_janus.shapes.probe checkpoints/shapes/stage0/vision.safetensors
    python -m lit_janus.shapes.probe random   # the same encoder at its random initialisation
    python -m lit_janus.shapes.probe runs/shapes/stage2/checkpoints/last.ckpt   # encoder + aligner
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_janus.config import Config

PROBES = ("column", "row", "color", "shape")


def object_features(features, processor, n_scenes: int, seed: int, grid: int) -> tuple[torch.Tensor, dict]:
    """[objects, width] features (`features`: pixels -> [B, patches, width]) of each object's centre
    patch, and its labels per probe."""
    from lit_janus.shapes.world import COLORS, SHAPES, ShapesWorld, grid_cell, random_scene

    world, rng = ShapesWorld(seed=seed, image_size=processor.image.image_size), random.Random(seed)
    feats, labels = [], {k: [] for k in PROBES}
    colors = list(COLORS)
    for start in range(0, n_scenes, 64):
        scenes = [random_scene(rng) for _ in range(min(64, n_scenes - start))]
        pixels = torch.stack([processor.understanding_pixels(world.render(s)) for s in scenes])
        with torch.no_grad():
            hidden = features(pixels)  # [B, grid*grid, width]
        for b, scene in enumerate(scenes):
            for o in scene.objects:
                col, row = grid_cell(o, grid)
                feats.append(hidden[b, row * grid + col])
                for k, v in zip(PROBES, (col, row, colors.index(o.color), SHAPES.index(o.shape))):
                    labels[k].append(v)
    return torch.stack(feats), {k: torch.tensor(v) for k, v in labels.items()}


def linear_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300, train_fraction: float = 0.8) -> dict:
    """{accuracy, majority}: held-out accuracy of a logistic regression on standardised features
    (full-batch Adam), and the held-out share of the most common class."""
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
        accuracy = ((x[n:] @ w + b).argmax(1) == y[n:]).float().mean().item()
    return {"accuracy": accuracy, "majority": torch.bincount(y[n:]).max().item() / (len(y) - n)}


def _is_stage0(path: Path) -> bool:
    from lit_janus.shapes.vq_training import stage0_meta

    return path.suffix == ".safetensors" or (path.is_file() and path.suffix == ".ckpt" and stage0_meta(path) is not None)


def feature_sources(weights: str, config: str | Config = "shapes") -> tuple[dict, object, Config]:
    """({name: pixels -> [B, patches, width]}, processor, config) for `weights`: `random`, a stage-0b
    encoder (vision.safetensors or its Lightning checkpoint), or a full model checkpoint (any layout
    `load_any` reads), whose encoder and aligner outputs are both probed."""
    from transformers import JanusVisionModel

    from lit_janus.checkpoint import load_any, processor_for
    from lit_janus.shapes.assemble import load_part

    path = Path(weights)
    if weights == "random" or _is_stage0(path):
        cfg = Config.from_name(config) if isinstance(config, str) else config
        torch.manual_seed(0)
        vision = JanusVisionModel(cfg.to_hf().vision_config)
        if weights != "random":
            vision.load_state_dict(load_part(path, "vision."), strict=True)
        vision.eval()
        return {"encoder": lambda px: vision(px).last_hidden_state}, processor_for("shapes", cfg), cfg
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    model, processor = load_any(path)
    model.eval()
    if model.config.und_encoder != "siglip":
        raise ValueError(f"{path}: probes need the SigLIP understanding encoder, not {model.config.und_encoder!r}")
    sources = {"encoder": lambda px: model.vision(px).last_hidden_state, "aligned": model.image_features}
    return sources, processor, model.config


def probe(weights: str, config: str | Config = "shapes", n_scenes: int = 1500, seed: int = 70001) -> dict:
    """{source: {probe: {accuracy, majority}}} for the features in `weights` (see `feature_sources`)."""
    sources, processor, cfg = feature_sources(weights, config)
    grid = cfg.image_size // cfg.patch_size
    out = {}
    for name, fn in sources.items():
        x, labels = object_features(fn, processor, n_scenes, seed, grid)
        out[name] = {k: linear_probe(x, y) for k, y in labels.items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lit_janus.shapes.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="vision.safetensors, a stage-0b .ckpt, `random`, or a full model checkpoint")
    p.add_argument("--config", default="shapes", help="model preset of a bare encoder (default: shapes)")
    p.add_argument("--scenes", type=int, default=1500, help="held-out scenes (1-4 objects each)")
    p.add_argument("--seed", type=int, default=70001, help="world seed of the probe scenes")
    a = p.parse_args(argv)
    result = probe(a.weights, a.config, a.scenes, a.seed)
    names = list(result)
    print("| probe (object-centre patch) | " + " | ".join(names) + " | majority class |")
    print("|---|" + "---|" * (len(names) + 1))
    for k in PROBES:
        print(f"| {k} | " + " | ".join(f"{result[n][k]['accuracy']:.3f}" for n in names)
              + f" | {result[names[0]][k]['majority']:.3f} |")
    return result


if __name__ == "__main__":
    main()
