"""ShapesEval and VQA for a trained model: `python -m lit_janus.shapes.evaluate_model CHECKPOINT`.

Generation (GenEval-style): prompts of the six GenEval categories drawn from ShapesWorld's train
split (the prompt templates and colour-shape combos the model trained on, new random draws), and
prompts of the held-out split (colours / colour attribution naming colour-shape combos that were
never a generation target), sampled with CFG as DeepSeek does (weight 5, temperature 1), scored
by `lit_janus.shapes.evaluate` (GenEval's rules on a deterministic detector).
Understanding: VQA accuracy (normalised exact match) on freshly drawn held-out scenes (a world seed
no training run uses), greedy answers, overall and per question type.
Ceilings: the same scorer on the rendered ground-truth images of the prompts, and on their VQ
reconstructions (encode -> decode with the model's own tokenizer) - the most any generator
sampling this tokenizer's codes can reach.

`ShapesEvalCallback` runs the same evaluation during training and logs it to TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

EVAL_SEED = 90_001  # world seed of evaluation prompts and VQA scenes; no training config uses it


@dataclass
class EvalSpec:
    """How much to evaluate (all drawn deterministically from `seed`)."""

    n_per_category: int = 32
    """Prompts per GenEval category (train split)."""
    categories: list[str] | None = None
    """GenEval categories to score (default: all six)."""
    n_heldout: int = 32
    """Prompts per held-out category (colors, color_attr); 0 skips the held-out split."""
    n_vqa: int = 200
    """VQA questions on held-out scenes; 0 skips understanding."""
    ceilings: bool = True
    """Also score the ground-truth renders and their VQ reconstructions."""
    cfg_weight: float = 5.0
    temperature: float = 1.0
    batch_size: int = 64
    """Images (or questions) per sampling batch."""
    seed: int = EVAL_SEED
    samples_per_category: int = 8
    """Images per category kept for the sample grid."""
    image_size: int = 64
    """Side of the rendered ground truth and VQA scenes (set to the model's image_size by `evaluate_model`)."""


@dataclass
class EvalResult:
    geneval: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)
    vqa: float | None = None
    vqa_by_type: dict[str, float] = field(default_factory=dict)
    ground_truth: dict[str, float] = field(default_factory=dict)
    vq_reconstruction: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# evaluation sets
# ---------------------------------------------------------------------------------------------
def t2i_set(spec: EvalSpec, split: str = "train"):
    """(prompts, metadatas, ground-truth images) of the evaluation prompts of one split."""
    from lit_janus.shapes.world import CATEGORIES, HELDOUT_CATEGORIES, ShapesWorld

    world = ShapesWorld(seed=spec.seed, split=split, image_size=spec.image_size)
    if split == "train":
        cats, n = list(spec.categories or CATEGORIES), spec.n_per_category
    else:
        cats = [c for c in HELDOUT_CATEGORIES if spec.categories is None or c in spec.categories]
        n = spec.n_heldout
    prompts, metas, images = [], [], []
    for c in cats:
        for i in range(n):
            s = world.t2i_sample(i + 10_000 * CATEGORIES.index(c), category=c)
            prompts.append(s["prompt"])
            metas.append(s["metadata"])
            images.append(s["image"])
    return prompts, metas, images


def vqa_set(spec: EvalSpec):
    from lit_janus.shapes.world import ShapesWorld

    world = ShapesWorld(seed=spec.seed, image_size=spec.image_size)
    return [world.qa_sample(i) for i in range(spec.n_vqa)]


# ---------------------------------------------------------------------------------------------
# running the model
# ---------------------------------------------------------------------------------------------
class Generated(NamedTuple):
    """One split's generated images with their prompts, and what the detector found in each (read by
    `score_detections` and `failure_table` alike, so no image is detected twice)."""

    prompts: list[str]
    metas: list[dict]
    images: torch.Tensor
    """uint8 [N, H, W, 3]"""
    detections: list

    @classmethod
    def detect(cls, prompts: list[str], metas: list[dict], images: torch.Tensor) -> Generated:
        """The record for uint8 `images`, each run through the detector once."""
        from lit_janus.shapes.evaluate import detect

        return cls(prompts, metas, images, [detect(im) for im in _uint8_to_pil(images)])


def _uint8_to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(a) for a in images.cpu().numpy()]


@torch.no_grad()
def generate_images(model, processor, prompts: list[str], spec: EvalSpec) -> torch.Tensor:
    """uint8 [N, S, S, 3], one image per prompt, seeds fixed per prompt index (reproducible)."""
    from lit_janus.decoder import StaticDecoder
    from lit_janus.generate import generate

    decoder = StaticDecoder(model, cuda_graphs=False, compile=False)
    out = []
    for start in range(0, len(prompts), spec.batch_size):
        chunk = prompts[start : start + spec.batch_size]
        gen = generate(model, processor, chunk, seeds=spec.seed + start, cfg_weight=spec.cfg_weight,
                       temperature=spec.temperature, decoder=decoder)
        out.append(gen.images)
    return torch.cat(out) if out else torch.zeros(0, 1, 1, 3, dtype=torch.uint8)


@torch.no_grad()
def vq_reconstructions(model, images: list) -> list:
    from lit_janus.shapes.vq_training import image_to_pixels
    from lit_janus.vq import to_uint8

    dev = model.llm.embed_tokens.weight.device
    out = []
    for start in range(0, len(images), 64):
        px = torch.stack([image_to_pixels(im) for im in images[start : start + 64]]).to(dev)
        out.append(to_uint8(model.decode_codes(model.encode_images(px).to(dev))).cpu())
    return _uint8_to_pil(torch.cat(out))


@torch.no_grad()
def answer_questions(model, processor, items: list[dict], batch_size: int = 64) -> list[str]:
    from lit_janus.decoder import StaticDecoder
    from lit_janus.generate import answer

    decoder = StaticDecoder(model, cuda_graphs=False, compile=False)
    preds = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        preds += answer(model, processor, [x["image"] for x in chunk], [x["question"] for x in chunk],
                        max_new_tokens=24, decoder=decoder)
    return preds


def score(images: list, metas: list[dict]) -> dict[str, float]:
    """`score_detections` of the detector's output for `images` (PIL)."""
    from lit_janus.shapes.evaluate import detect

    return score_detections([detect(im) for im in images], metas)


def score_detections(detections: list, metas: list[dict]) -> dict[str, float]:
    """GenEval's rules (`lit_janus.shapes.evaluate.evaluate`): per category and `overall`, plus
    `exact_<category>`: the fraction of images that pass *and* contain nothing but the objects the
    prompt names (ShapesWorld's ground truth always does), `exact` their mean over categories.
    GenEval's rules only ask for "at least" the named objects, which a real detector's confidence
    threshold makes meaningful; this detector finds shapes in any colour blob, so an image of
    scattered blobs passes "a photo of a circle" - the exact-scene rate is the stricter number to
    read alongside."""
    from lit_janus.shapes.evaluate import evaluate, score_one

    result = evaluate(detections, metas)
    exact: dict[str, list[bool]] = {}
    for dets, meta in zip(detections, metas):
        named = sum(req["count"] for req in meta.get("include", []))
        exact.setdefault(meta["tag"], []).append(len(dets) == named and score_one(dets, meta))
    per_tag = {f"exact_{tag}": float(np.mean(v)) for tag, v in exact.items()}
    result["exact"] = float(np.mean(list(per_tag.values()))) if per_tag else 0.0
    return result | per_tag


@torch.no_grad()
def evaluate_model(model, processor, spec: EvalSpec | None = None, *, generation: bool = True) -> tuple[EvalResult, dict]:
    """Run the whole evaluation. Returns (result, artefacts): artefacts maps each split scored ("train",
    "heldout") to its `Generated` images, for grids and `failure_table`."""
    from lit_janus.shapes.evaluate import normalize_answer, vqa_accuracy

    spec = replace(spec or EvalSpec(), image_size=model.config.image_size)
    t0 = time.perf_counter()
    res, art = EvalResult(), {}
    was_training = model.training
    model.eval()
    try:
        if generation and spec.n_per_category > 0:
            prompts, metas, gt = t2i_set(spec, "train")
            art["train"] = gen = Generated.detect(prompts, metas, generate_images(model, processor, prompts, spec))
            res.geneval = score_detections(gen.detections, metas)
            if spec.ceilings:
                res.ground_truth = score(gt, metas)
                res.vq_reconstruction = score(vq_reconstructions(model, gt), metas)
        if generation and spec.n_heldout > 0:
            prompts, metas, _ = t2i_set(spec, "heldout")
            if prompts:
                art["heldout"] = gen = Generated.detect(prompts, metas, generate_images(model, processor, prompts, spec))
                res.heldout = score_detections(gen.detections, metas)
        if spec.n_vqa > 0:
            items = vqa_set(spec)
            preds = answer_questions(model, processor, items, spec.batch_size)
            res.vqa = vqa_accuracy(preds, [x["answer"] for x in items])
            by: dict[str, list[bool]] = {}
            for p, x in zip(preds, items):
                by.setdefault(x["qtype"], []).append(normalize_answer(p) == normalize_answer(x["answer"]))
            res.vqa_by_type = {k: float(np.mean(v)) for k, v in sorted(by.items())}
            res.examples = [{"question": x["question"], "answer": x["answer"], "prediction": p}
                            for p, x in list(zip(preds, items))[:12]]
    finally:
        model.train(was_training)
    res.seconds = time.perf_counter() - t0
    return res, art


# ---------------------------------------------------------------------------------------------
# grids and reports
# ---------------------------------------------------------------------------------------------
def sample_grid(artefacts: dict, per_category: int = 8) -> torch.Tensor | None:
    """One uint8 grid [H, W, 3]: a row per category (train split, then held-out), `per_category` images each."""
    rows = []
    for split in ("train", "heldout"):
        if split not in artefacts:
            continue
        metas, images = artefacts[split].metas, artefacts[split].images
        tags = list(dict.fromkeys(m["tag"] for m in metas))
        for tag in tags:
            idx = [i for i, m in enumerate(metas) if m["tag"] == tag][:per_category]
            row = images[idx]
            if len(idx) < per_category:
                row = torch.cat([row, torch.full((per_category - len(idx), *row.shape[1:]), 255, dtype=torch.uint8)])
            rows.append(row)
    if not rows:
        return None
    n = len(rows)
    flat = torch.cat(rows)
    h, w = flat.shape[1:3]
    pad = 2
    grid = torch.full((n * (h + pad) - pad, per_category * (w + pad) - pad, 3), 255, dtype=torch.uint8)
    for r in range(n):
        for c in range(per_category):
            grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = flat[r * per_category + c]
    return grid


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    from lit_janus.predict import save_png

    path = Path(path)
    save_png(grid, path)
    return path


def failure_table(artefacts: dict) -> str:
    """Per split and category: how many generated images pass, and why the others fail; per split the
    counting prompts by number asked (how many of the named shape each image holds: "3: 3 x42, 4 x19"
    means 42 images asked for three drew three, 19 drew four), and the colour confusions of coloured
    prompt objects (`evaluate.colour_confusions`)."""
    from collections import Counter

    from lit_janus.shapes.evaluate import colour_confusions, why_failed

    lines = []
    for split, gen in artefacts.items():
        counts: dict[str, Counter] = {}
        drawn_for: dict[int, Counter] = {}  # number asked -> Counter(number drawn)
        confused, leaked = Counter(), 0
        for meta, dets in zip(gen.metas, gen.detections):
            counts.setdefault(meta["tag"], Counter())[why_failed(dets, meta) or "pass"] += 1
            if meta["tag"] == "counting":
                asked = meta["include"][0]
                drawn_for.setdefault(asked["count"], Counter())[sum(d.shape == asked["class"] for d in dets)] += 1
            for named, drawn, other in colour_confusions(dets, meta):
                confused[f"{named} -> {drawn}"] += 1
                leaked += other
        for tag, c in counts.items():
            lines.append(f"{split} {tag}: " + ", ".join(f"{k} {n}" for k, n in c.most_common()))
        if drawn_for:
            lines.append(f"{split} counting, asked: drawn x images (shapes of the named kind): " + "; ".join(
                f"{n}: " + ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) for n, c in sorted(drawn_for.items())))
        if confused:
            lines.append(f"{split} colour confusions (named -> drawn, shape right, colour never): "
                         + ", ".join(f"{k} {n}" for k, n in confused.most_common())
                         + f"; {leaked} of {sum(confused.values())} are another named object's colour")
    return "\n".join(lines)


def summary(res: EvalResult) -> str:
    """Human-readable lines: the GenEval-style table row(s) and VQA."""
    from lit_janus.shapes.evaluate import format_table

    lines = []
    if res.geneval:
        lines.append(format_table(res.geneval, name="generated (train prompts)"))
    if res.heldout:
        lines.append(format_table(res.heldout, name="generated (held-out combos)", header=not res.geneval))
    if res.ground_truth:
        lines.append(format_table(res.ground_truth, name="ground truth renders", header=False))
    if res.vq_reconstruction:
        lines.append(format_table(res.vq_reconstruction, name="VQ reconstructions (ceiling)", header=False))
    exact = [f"{name} {r['exact']:.2f}" for name, r in (("generated", res.geneval), ("held-out", res.heldout),
                                                          ("VQ reconstructions", res.vq_reconstruction)) if "exact" in r]
    if exact:
        lines.append("exact-scene rate (nothing but the named objects): " + ", ".join(exact))
    if res.vqa is not None:
        by = ", ".join(f"{k} {v:.2f}" for k, v in res.vqa_by_type.items())
        lines.append(f"VQA accuracy (held-out scenes): {res.vqa:.3f}  [{by}]")
    lines.append(f"(evaluated in {res.seconds:.1f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# during training
# ---------------------------------------------------------------------------------------------
class ShapesEvalCallback(Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training), run ShapesEval and VQA on
    the model being trained and log `shapes_eval/<category>`, `shapes_eval/overall`,
    `shapes_eval_heldout/...`, `vqa/accuracy`, `vqa/<type>` and a sample grid to TensorBoard.

    Expects the LightningModule to expose `model` (a `JanusPro`) and `processor` (JanusModule does).
    Every rank evaluates (FSDP2 gathers weights collectively); rank 0 logs.

    Args:
        every_n_steps: evaluation interval in optimizer steps (0: only at the end of training).
        n_per_category: prompts per GenEval category.
        categories: categories to score (default: all six).
        n_heldout: held-out-combo prompts per category (0: skip).
        n_vqa: VQA questions (0: skip understanding).
        generation: score generation at all (False for understanding-only runs).
        cfg_weight: classifier-free guidance weight.
        at_end: also evaluate when training ends.
    """

    def __init__(self, every_n_steps: int = 500, n_per_category: int = 16, categories: list[str] | None = None,
                 n_heldout: int = 0, n_vqa: int = 64, generation: bool = True, cfg_weight: float = 5.0,
                 at_end: bool = True):
        self.spec = EvalSpec(n_per_category=n_per_category, categories=categories, n_heldout=n_heldout,
                             n_vqa=n_vqa, ceilings=False, cfg_weight=cfg_weight)
        self.every_n_steps, self.generation, self.at_end = every_n_steps, generation, at_end
        self._last_step = -1
        self.last: EvalResult | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self.run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end and trainer.global_step != self._last_step:
            self.run(trainer, pl_module)

    def run(self, trainer, pl_module) -> EvalResult:
        from lit_janus.callbacks import full_parameters

        self._last_step = step = trainer.global_step
        model = pl_module.model
        modes = {m: m.training for m in model.modules()}
        try:
            with full_parameters(model), trainer.precision_plugin.forward_context():
                res, art = evaluate_model(model, pl_module.processor, self.spec, generation=self.generation)
        finally:
            for m, mode in modes.items():
                m.training = mode
        self.last = res
        if trainer.is_global_zero:
            self._log(trainer, res, art, step)
        return res

    def _log(self, trainer, res: EvalResult, art: dict, step: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        scalars = {f"shapes_eval/{k}": v for k, v in res.geneval.items()}
        scalars |= {f"shapes_eval_heldout/{k}": v for k, v in res.heldout.items()}
        if res.vqa is not None:
            scalars["vqa/accuracy"] = res.vqa
            scalars |= {f"vqa/{k}": v for k, v in res.vqa_by_type.items()}
        grid = sample_grid(art, self.spec.samples_per_category)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step)
            if isinstance(logger, TensorBoardLogger) and grid is not None:
                logger.experiment.add_image("shapes_eval/samples", grid, step, dataformats="HWC")
                logger.experiment.flush()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> EvalResult:
    p = argparse.ArgumentParser(
        prog="python -m lit_janus.shapes.evaluate_model",
        description="ShapesEval (GenEval categories + overall, train and held-out prompts) and VQA accuracy "
                    "(held-out scenes) of a ShapesWorld checkpoint (pretrained directory or Lightning .ckpt).")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=32, help="prompts per GenEval category")
    p.add_argument("--heldout", type=int, default=32, help="held-out-combo prompts per category (0: skip)")
    p.add_argument("--vqa", type=int, default=200, help="VQA questions on held-out scenes (0: skip)")
    p.add_argument("--categories", nargs="*", default=None, help="GenEval categories (default: all six)")
    p.add_argument("--no-generation", action="store_true", help="VQA only")
    p.add_argument("--no-ceilings", action="store_true", help="skip ground-truth / VQ-reconstruction scoring")
    p.add_argument("--cfg-weight", type=float, default=5.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="directory for results.json and samples.png")
    p.add_argument("--failures", action="store_true",
                   help="also count why the generated images fail, per category (`evaluate.why_failed`), how many "
                        "shapes the counting prompts drew per number asked, and which colours are drawn for which "
                        "(`evaluate.colour_confusions`)")
    a = p.parse_args(argv)

    from lit_janus.checkpoint import load_any

    model, processor = load_any(a.checkpoint, device=a.device)
    spec = EvalSpec(n_per_category=a.n, categories=a.categories, n_heldout=a.heldout, n_vqa=a.vqa,
                    ceilings=not a.no_ceilings, cfg_weight=a.cfg_weight, temperature=a.temperature,
                    batch_size=a.batch_size, seed=a.seed)
    res, art = evaluate_model(model.eval(), processor, spec, generation=not a.no_generation)
    print(summary(res))
    if a.failures:
        print(failure_table(art))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res.as_dict(), indent=2))
        grid = sample_grid(art, spec.samples_per_category)
        if grid is not None:
            save_grid(grid, out / "samples.png")
        print(f"wrote {out / 'results.json'}" + (f" and {out / 'samples.png'}" if grid is not None else ""))
    return res


if __name__ == "__main__":
    main()
