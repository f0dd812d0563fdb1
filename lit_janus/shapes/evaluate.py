"""ShapesEval: GenEval's scoring rules with a deterministic detector in place of Mask2Former + CLIP.

GenEval detects objects, then checks each prompt's metadata (classes with counts, exclusions, colours,
relative positions). In ShapesWorld an object's class is its shape and its colour is a palette
colour, so a tiny classical detector suffices: nearest-palette colour segmentation, connected
components (a blob of two colours that is no single shape split by colour: touching objects), shape
from box geometry. It is validated on rendered ground truth and on degraded
renders (noise/blur/JPEG, standing in for VQ reconstructions) in the tests.

Deviations from GenEval, forced by having no detector confidence: objects of a class are ordered by
area (largest first) instead of by confidence, and a colour requirement picks objects of that colour
first, i.e. "a red circle" passes when any detected circle is red.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .world import BACKGROUND, CATEGORIES, COLORS, NUMBER_WORDS, SIZES

_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
_COLOR_NAMES = ("background", *COLORS)
COLOR_THRESHOLD = 100.0  # max RGB distance to the nearest palette entry; farther pixels are ignored
MIN_AREA = 0.25 * 0.5 * min(SIZES.values()) ** 2  # a quarter of the smallest triangle (image-area fraction)
SIZE_THRESHOLD = sum(SIZES.values()) / 2  # box side between "small" and "large"
POSITION_THRESHOLD = 0.1  # GenEval's default


@dataclass(frozen=True)
class Detection:
    """A detected object; coordinates are fractions of the image side, ``area`` a fraction of the image."""

    shape: str  # a SHAPES entry, or "other" for a blob that is no shape
    color: str
    size: str
    cx: float
    cy: float
    area: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (x1, y1 exclusive)


def _components(mask: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """4-connected component labels (-1 = not in mask): min-label propagation with pointer jumping.
    With ``key``, neighbours join only where their keys are equal."""
    h, w = mask.shape
    none = h * w
    lab = np.where(mask, np.arange(none).reshape(h, w), none)
    if key is not None:
        pk = np.pad(key, 1, constant_values=-1)
        same = [pk[:-2, 1:-1] == key, pk[2:, 1:-1] == key, pk[1:-1, :-2] == key, pk[1:-1, 2:] == key]
    while True:
        p = np.pad(lab, 1, constant_values=none)
        nbs = [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        if key is not None:
            nbs = [np.where(ok, n, none) for ok, n in zip(same, nbs)]
        nb = np.minimum.reduce([lab, *nbs])
        new = np.where(mask, nb, none).ravel()
        ext = np.append(new, none)
        while True:  # labels are pixel indices of the same component: follow them to shorten chains
            jumped = ext[ext]
            if np.array_equal(jumped, ext):
                break
            ext = jumped
        new = ext[:-1].reshape(h, w)
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.full((h, w), -1)
    out[mask] = np.unique(lab[mask], return_inverse=True)[1]
    return out


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """The three shapes drawn to fill an h x w box (the apex-up triangle as world.py draws it)."""
    y, x = np.mgrid[0:h, 0:w]
    x, y = (2 * x + 1) / w - 1, (2 * y + 1) / h - 1  # pixel centres in [-1, 1]
    return {"circle": x**2 + y**2 <= 1, "square": np.ones((h, w), bool), "triangle": np.abs(x) <= (y + 1) / 2}


def _one_shape(m: np.ndarray) -> bool:
    """Whether a tight boolean crop is a single object: a near-square box that one shape fills."""
    h, w = m.shape
    if max(h, w) > 1.25 * min(h, w):
        return False
    return max((m & t).sum() / (m | t).sum() for t in _templates(h, w).values()) >= 0.8


def _split_by_colour(labels: np.ndarray, nearest: np.ndarray, min_px: float) -> np.ndarray:
    """Relabel the blobs that are two objects of different colours touching (generated images can
    draw them; renders never do) into one component per colour. A blob is split when two or more
    colours each cover an object's worth of interior pixels *and* the blob is not one shape: a VQ
    reconstruction can shade a single object from one palette colour into another, and a blur leaves
    an edge fringe of a third (orange edges read as yellow), and neither cuts an object in two."""
    fg = labels >= 0
    n_col = len(_PALETTE)
    # count only interior pixels (all four neighbours the same colour): a fringe is a thin ring with
    # almost none, a touching object keeps most of its area
    pn = np.pad(np.where(fg, nearest, -1), 1, constant_values=-1)
    core = fg & (pn[:-2, 1:-1] == nearest) & (pn[2:, 1:-1] == nearest) & (pn[1:-1, :-2] == nearest) & (pn[1:-1, 2:] == nearest)
    counts = np.bincount(labels[core] * n_col + nearest[core], minlength=(labels.max() + 1) * n_col)
    split = (counts.reshape(-1, n_col) >= min_px).sum(1) >= 2
    for i in np.flatnonzero(split):
        ys, xs = np.nonzero(labels == i)
        split[i] = not _one_shape(labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == i)
    if not split.any():
        return labels
    in_split = fg & split[np.maximum(labels, 0)]
    # keys: colour inside a split blob, a per-blob value elsewhere (so untouched blobs stay whole)
    key = np.where(in_split, nearest, n_col + labels)
    return _components(fg, key)


def _classify(m: np.ndarray) -> str:
    """Shape from a tight boolean crop. Streaks and scribbles (elongated or sparse) are "other", which no
    prompt asks for. An apex-up triangle is top-light (top half ~1/3 of the bottom), which survives a
    blurred-away apex; otherwise the circle or square template (stretched to the box) with the higher
    IoU wins, which tolerates the rounded corners of a blurred or VQ-decoded square."""
    h, w = m.shape
    if max(h, w) > 2 * min(h, w) or m.mean() < 0.3:
        return "other"
    if m[: h // 2].mean() < 0.7 * m[h - h // 2 :].mean():
        return "triangle"
    circle = _templates(h, w)["circle"]
    return "circle" if (m & circle).sum() / (m | circle).sum() > m.mean() else "square"


def detect(image: Image.Image) -> list[Detection]:
    """Find the shapes in an image: colour-segment, label components, drop noise blobs, classify."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = rgb.shape
    # squared distances to the palette as |x|^2 - 2 x.p + |p|^2: one matmul instead of an (H, W, 7, 3) array
    d2 = (rgb**2).sum(-1, keepdims=True) - 2 * rgb @ _PALETTE.T + (_PALETTE**2).sum(-1)
    nearest = d2.argmin(-1)
    fg = (nearest > 0) & (np.take_along_axis(d2, nearest[..., None], -1)[..., 0] < COLOR_THRESHOLD**2)
    labels = _split_by_colour(_components(fg), nearest, MIN_AREA * h * w)
    # group pixel indices by component once (sorting) instead of scanning the image per component
    idx = np.flatnonzero(fg)
    lab = labels.ravel()[idx]
    order = np.argsort(lab, kind="stable")
    counts = np.bincount(lab, minlength=1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    side = max(h, w)
    dets = []
    for i in np.flatnonzero(counts >= MIN_AREA * h * w):
        ys, xs = np.divmod(idx[order[starts[i] : starts[i + 1]]], w)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        color = _COLOR_NAMES[np.bincount(nearest[ys, xs], minlength=len(_PALETTE))[1:].argmax() + 1]
        shape = _classify(labels[y0:y1, x0:x1] == i)
        size = "large" if max(x1 - x0, y1 - y0) / side > SIZE_THRESHOLD else "small"
        box = (float(x0 / w), float(y0 / h), float(x1 / w), float(y1 / h))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        dets.append(Detection(shape, color, size, cx, cy, float(counts[i] / (h * w)), box))
    return dets


def relative_position(a: Detection, b: Detection) -> set[str]:
    """GenEval's relation of A to B: centre offset, shrunk by 0.1 x the summed box dims, then normalised."""
    offset = np.array([a.cx - b.cx, a.cy - b.cy])
    dims = np.array([a.box[2] - a.box[0] + b.box[2] - b.box[0], a.box[3] - a.box[1] + b.box[3] - b.box[1]])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def score_one(image: Image.Image | Sequence[Detection], metadata: dict) -> bool:
    """GenEval's rule: every ``include`` clause holds (at least ``count`` of the class, with colour and
    position if given; position is checked against the objects matched by the target clause) and no
    ``exclude`` clause does (fewer than ``count`` of the class)."""
    dets = detect(image) if isinstance(image, Image.Image) else list(image)
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(dets, key=lambda d: -d.area):
        by_class.setdefault(d.shape, []).append(d)
    correct, groups = True, []
    for req in metadata.get("include", []):
        found = [d for d in by_class.get(req["class"], []) if d.color == req.get("color", d.color)]
        found = found[: req["count"]]
        matched = len(found) >= req["count"]
        if matched and "position" in req:
            rel, target = req["position"]
            targets = groups[target]
            matched = targets is not None and all(rel in relative_position(a, b) for a in found for b in targets)
        groups.append(found if matched else None)
        correct &= matched
    for req in metadata.get("exclude", []):
        found = [d for d in by_class.get(req["class"], []) if d.color == req.get("color", d.color)]
        correct &= len(found) < req["count"]
    return correct


def why_failed(image: Image.Image | Sequence[Detection], metadata: dict) -> str | None:
    """Why an image fails GenEval's rule (``None`` if it passes), the first reason that applies:
    ``too few objects`` (fewer found than named), ``missing shape`` (a named shape absent in any colour,
    e.g. "a square and a circle" drawn as two squares), ``wrong count``, ``colours swapped`` (two named
    objects, each in the other's colour), ``wrong colour``, ``wrong position``, ``extra objects``
    (an ``exclude`` clause holds)."""
    dets = detect(image) if isinstance(image, Image.Image) else list(image)
    if score_one(dets, metadata):
        return None
    include = metadata.get("include", [])
    shapes = [d.shape for d in dets]
    if len(dets) < sum(r["count"] for r in include):
        return "too few objects"
    if any(r["class"] not in shapes for r in include):
        return "missing shape"
    if any(shapes.count(r["class"]) < r["count"] for r in include):
        return "wrong count"
    colored = [r for r in include if "color" in r]
    if colored:
        have = {(d.shape, d.color) for d in dets}
        if not all((r["class"], r["color"]) in have for r in colored):
            swapped = len(colored) == 2 and {(colored[0]["class"], colored[1]["color"]),
                                              (colored[1]["class"], colored[0]["color"])} <= have
            return "colours swapped" if swapped else "wrong colour"
    if any("position" in r for r in include):
        return "wrong position"
    return "extra objects"


def colour_confusions(image: Image.Image | Sequence[Detection], metadata: dict) -> list[tuple[str, str, bool]]:
    """``(named, drawn, leaked)`` for each prompt object whose shape is drawn but never in its named colour,
    one entry per colour that shape is drawn in; ``leaked`` when that is another named object's colour.
    Neighbours on the hue circle (orange drawn yellow) point at colour precision, leaked ones at
    attribute binding (both objects take one colour)."""
    dets = detect(image) if isinstance(image, Image.Image) else list(image)
    named = [r for r in metadata.get("include", []) if "color" in r]
    out = []
    for r in named:
        drawn = {d.color for d in dets if d.shape == r["class"]}
        if drawn and r["color"] not in drawn:
            others = {o["color"] for o in named if o is not r}
            out += [(r["color"], c, c in others) for c in sorted(drawn)]
    return out


def evaluate(images: Sequence[Image.Image | Sequence[Detection]], metadatas: Sequence[dict]) -> dict[str, float]:
    """Per-category accuracy (keyed by GenEval tag) and ``overall`` = mean of the category accuracies.
    ``images`` may be images or their ``detect`` results (as ``score_one`` takes either)."""
    if len(images) != len(metadatas):
        raise ValueError(f"{len(images)} images but {len(metadatas)} metadata entries")
    hits: dict[str, list[bool]] = {}
    for img, meta in zip(images, metadatas):
        hits.setdefault(meta["tag"], []).append(score_one(img, meta))
    tags = [t for t in CATEGORIES if t in hits] + [t for t in hits if t not in CATEGORIES]
    result = {tag: float(np.mean(hits[tag])) for tag in tags}
    result["overall"] = float(np.mean(list(result.values()))) if result else 0.0
    return result


TABLE_COLUMNS = ("Single Obj.", "Two Obj.", "Counting", "Colors", "Position", "Color Attri.", "Overall")


def format_table(result: dict[str, float], name: str | None = None, header: bool = True) -> str:
    """A markdown row in GenEval's column order (as in the Janus-Pro paper); missing categories show '-'."""
    cells = [f"{result[k]:.2f}" if k in result else "-" for k in (*CATEGORIES, "overall")]
    cols = list(TABLE_COLUMNS)
    if name is not None:
        cols, cells = ["Method", *cols], [name, *cells]
    row = "| " + " | ".join(cells) + " |"
    if not header:
        return row
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + row


_DIGITS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, punctuation and articles dropped, number words as digits."""
    words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
    return " ".join(_DIGITS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of normalised exact matches."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)
