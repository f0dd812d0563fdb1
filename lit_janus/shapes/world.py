"""ShapesWorld: a seeded, infinite, file-free world of flat-coloured shapes.

Janus-Pro's data and weights cannot be downloaded here, so the recipe is exercised on a world small
enough to train in minutes: 1-4 shapes (3 shapes x 6 colours x 2 sizes) on a plain background.
Everything a training stage needs comes from here:

- text-to-image prompts in GenEval's six categories, with metadata in GenEval's own format so that
  ``evaluate.score_one`` applies GenEval's rules unchanged (``make_t2i``);
- class names for Stage I, the ImageNet-class-name analogue (``CLASS_NAMES``);
- question/answer pairs for understanding (``make_qa``) and plain sentences for the text stream
  (``make_sentence``);
- held-out colour-shape combinations that are never a generation target in the train split, so
  compositional generalisation can be measured (``split="heldout"``).

Every sample is a pure function of ``(seed, task, index)`` (``ShapesWorld``), so the world works as a
map-style dataset of any length and gives the same data on every DataLoader worker and rank.

Text conventions (see ``split_words``): lower case; words are split on spaces; ``.``, ``,`` and ``?``
are separate tokens. ``vocabulary()`` lists every token any generator can emit.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Hues far apart in RGB (min pairwise distance ~100) so nearest-colour segmentation stays reliable
# on slightly-off generated colours; the light-grey background is far from all of them.
COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (245, 220, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "purple": (140, 50, 190),
}
BACKGROUND: RGB = (240, 240, 240)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Side of an object's bounding box as a fraction of the image side: resolution independent.
SIZES: dict[str, float] = {"small": 0.18, "large": 0.28}
GAP = 0.06  # minimum empty space between two objects' boxes (fraction of the image side)
MARGIN = 0.03  # minimum empty space between a box and the image border

# Never a generation target (t2i or class) in the train split; the only targets in "heldout".
HELDOUT: tuple[tuple[str, str], ...] = (("blue", "triangle"), ("green", "square"), ("purple", "circle"))
ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((c, s) for s in SHAPES for c in COLORS)
TRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(cs for cs in ALL_COMBOS if cs not in HELDOUT)
# Stage I class ids are fixed over all 18 combos so that ids agree between splits.
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in ALL_COMBOS)

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# the categories that name a colour: the only ones of the heldout split
HELDOUT_CATEGORIES: tuple[str, ...] = ("colors", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNTS: tuple[int, ...] = (2, 3, 4)  # GenEval's counting prompts use two to four
MAX_OBJECTS = 4
QA_TYPES: tuple[str, ...] = ("color", "count", "shape", "position", "exists", "describe")
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
)
CORNERS: dict[str, int] = {"circle": 0, "square": 4, "triangle": 3}
PUNCTUATION: tuple[str, ...] = (".", ",", "?")


@dataclass(frozen=True)
class Obj:
    """One shape; ``(x, y)`` is the centre of its bounding box in [0, 1] image coordinates (y down)."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def extent(self) -> float:
        return SIZES[self.size]

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    objects: list[Obj]
    background: RGB = field(default=BACKGROUND)


# ----------------------------------------------------------------------------- rendering


def pixel_box(o: Obj, side: int) -> tuple[int, int, int, int]:
    """The inclusive pixel box (x0, y0, x1, y1) `render` draws `o` in, on a `side`-pixel canvas."""
    half = o.extent / 2
    x0, y0 = round((o.x - half) * side), round((o.y - half) * side)
    return x0, y0, round((o.x + half) * side) - 1, round((o.y + half) * side) - 1


def _draw(draw: ImageDraw.ImageDraw, o: Obj, side: int, fill) -> None:
    x0, y0, x1, y1 = pixel_box(o, side)
    if o.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif o.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif o.shape == "triangle":  # apex up, base at the bottom: fills half its box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render(scene: Scene, image_size: int = 64, antialias: bool = False) -> Image.Image:
    """Draw flat shapes; ``antialias`` draws at 4x and box-downsamples (softer edges, off-palette edge pixels)."""
    scale = 4 if antialias else 1
    side = image_size * scale
    img = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, side, COLORS[o.color])
    if antialias:
        img = img.resize((image_size, image_size), Image.Resampling.BOX)
    return img


def label_map(scene: Scene, image_size: int = 64) -> Image.Image:
    """Which object each pixel of ``render(scene)`` shows: 0 background, i + 1 for ``scene.objects[i]`` (mode L)."""
    img = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        _draw(draw, o, image_size, i + 1)
    return img


# ----------------------------------------------------------------------------- placement


def _separated(a: Obj, b: Obj) -> bool:
    """Boxes are apart by at least GAP on one axis, so shapes never touch and never merge in detection."""
    need = (a.extent + b.extent) / 2 + GAP
    return abs(a.x - b.x) >= need or abs(a.y - b.y) >= need


def clearly(rel: str, a: Obj, b: Obj) -> bool:
    """``a`` is unambiguously ``rel`` ``b``: offset >= 0.3 on the named axis, at most half that on the other.

    This is stricter than GenEval's rule, so every ground-truth position scene also passes GenEval's.
    """
    dx, dy = a.x - b.x, a.y - b.y
    main, other = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return main >= 0.3 and abs(other) <= 0.5 * main


def place(
    rng: random.Random, specs: Sequence[tuple[str, str, str]], relation: str | None = None
) -> list[Obj]:
    """Place ``(shape, color, size)`` specs at random non-overlapping positions.

    With ``relation``, object 1 is placed ``relation`` object 0 (GenEval's position layout).
    Objects are placed one at a time with retries; a dead end restarts the whole layout.
    """
    for _ in range(1000):
        objs: list[Obj] = []
        for i, (shape, color, size) in enumerate(specs):
            lo = SIZES[size] / 2 + MARGIN
            for _ in range(100):
                o = Obj(shape, color, size, rng.uniform(lo, 1 - lo), rng.uniform(lo, 1 - lo))
                if all(_separated(o, p) for p in objs) and (
                    relation is None or i != 1 or clearly(relation, o, objs[0])
                ):
                    objs.append(o)
                    break
            else:
                break
        if len(objs) == len(specs):
            return objs
    raise RuntimeError(f"could not place {specs}")


# ----------------------------------------------------------------------------- text helpers


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def split_words(text: str) -> list[str]:
    """The word-level tokenisation every generator's text obeys: lower case, ``.,?`` split off."""
    return re.findall(r"[a-z0-9]+|[.,?]", text.lower())


def describe(objects: Sequence[Obj]) -> str:
    """Canonical short description, left to right: 'a red circle, a blue square and a green triangle'."""
    parts = [_a(o.phrase) for o in sorted(objects, key=lambda o: (o.x, o.y))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def grid_cell(o: Obj, grid: int) -> tuple[int, int]:
    """(column, row) of the cell of a ``grid`` x ``grid`` layout that ``o``'s centre falls in."""
    return min(int(o.x * grid), grid - 1), min(int(o.y * grid), grid - 1)


def grounded_caption(objects: Sequence[Obj], grid: int = 4) -> str:
    """Objects left to right with the cell of a ``grid`` x ``grid`` layout their centre falls in,
    column then row: 'red circle 0 2 , blue square 3 1' (a LocCa-style target, see siglip.py)."""
    if grid > MAX_OBJECTS + 1:
        raise ValueError(f"grid {grid}: cells are numbered with the words 0-{MAX_OBJECTS} of the vocabulary")
    return " , ".join(f"{o.phrase} {' '.join(map(str, grid_cell(o, grid)))}"
                      for o in sorted(objects, key=lambda o: (o.x, o.y)))


def hard_negative(objects: Sequence[Obj], rng: random.Random) -> str:
    """The description of a minimally different scene - one object's shape or colour changed - for
    contrastive pretraining: in-batch negatives rarely differ in a single shape, so without these
    an encoder can match captions by colours and counts alone."""
    objs = list(objects)
    i = rng.randrange(len(objs))
    o = objs[i]
    if rng.random() < 0.5:
        objs[i] = replace(o, shape=rng.choice([s for s in SHAPES if s != o.shape]))
    else:
        objs[i] = replace(o, color=rng.choice([c for c in COLORS if c != o.color]))
    return describe(objs)


# ----------------------------------------------------------------------------- text-to-image


def _color(rng: random.Random, shape: str, combos: Sequence[tuple[str, str]], exclude: Sequence[str] = ()) -> str:
    return rng.choice([c for c, s in combos if s == shape and c not in exclude])


def _size(rng: random.Random) -> str:
    return rng.choice(tuple(SIZES))


def reading_order(objects: Sequence[Obj], rows: int = 8) -> list[Obj]:
    """Objects in the order a raster scan of ``rows`` token rows meets them: by the row of their top
    edge, then left to right (8 rows: ShapesWorld's 64-px images are 8 x 8 VQ tokens)."""
    return sorted(objects, key=lambda o: (int((o.y - o.extent / 2) * rows), o.x - o.extent / 2))


def make_t2i(
    category: str, rng: random.Random, split: str = "train", object_order: str = "random"
) -> tuple[str, dict, Scene]:
    """A prompt in one GenEval category, its GenEval-format metadata and a scene that satisfies it.

    Train targets use only TRAIN_COMBOS. The heldout split only has ``colors`` and ``color_attr``
    (the categories that name a colour) and every prompt names a held-out combo.

    ``object_order`` says which object a two-object prompt (``two_object``, ``color_attr``) names
    first: ``random`` (GenEval's prompts carry no order) or ``reading``, the one a raster scan draws
    first (``reading_order``). A caption in reading order tells the generator what to draw next; one in
    random order leaves it to recall which of the two shapes it has already drawn.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    if object_order not in ("random", "reading"):
        raise ValueError(f"object_order must be 'random' or 'reading', not {object_order!r}")
    if split == "heldout" and category not in HELDOUT_CATEGORIES:
        raise ValueError(f"the heldout split only has 'colors' and 'color_attr', not {category!r}")
    combos = TRAIN_COMBOS
    meta: dict = {"tag": category}
    relation = None
    if category == "single_object":
        shape = rng.choice(SHAPES)
        specs = [(shape, _color(rng, shape, combos), _size(rng))]
        meta["include"] = [{"class": shape, "count": 1}]
        prompt = f"a photo of {_a(shape)}"
    elif category == "two_object":
        s0, s1 = rng.sample(SHAPES, 2)
        specs = [(s, _color(rng, s, combos), _size(rng)) for s in (s0, s1)]
    elif category == "counting":
        shape, n = rng.choice(SHAPES), rng.choice(COUNTS)
        specs = [(shape, _color(rng, shape, combos), _size(rng)) for _ in range(n)]
        meta["include"] = [{"class": shape, "count": n}]
        meta["exclude"] = [{"class": shape, "count": n + 1}]
        prompt = f"a photo of {NUMBER_WORDS[n]} {shape}s"
    elif category == "colors":
        color, shape = rng.choice(HELDOUT if split == "heldout" else combos)
        specs = [(shape, color, _size(rng))]
        meta["include"] = [{"class": shape, "count": 1, "color": color}]
        prompt = f"a photo of {_a(color + ' ' + shape)}"
    elif category == "position":
        s0, s1 = rng.sample(SHAPES, 2)
        relation = rng.choice(RELATIONS)
        specs = [(s, _color(rng, s, combos), _size(rng)) for s in (s0, s1)]
        meta["include"] = [{"class": s0, "count": 1}, {"class": s1, "count": 1, "position": [relation, 0]}]
        prompt = f"a photo of {_a(s1)} {relation} {_a(s0)}"
    elif category == "color_attr":
        if split == "heldout":  # one held-out combo, in either slot, beside any other combo
            c0, s0 = rng.choice(HELDOUT)
            s1 = rng.choice([s for s in SHAPES if s != s0])
            c1 = _color(rng, s1, ALL_COMBOS, exclude=[c0])
            if rng.random() < 0.5:
                (c0, s0), (c1, s1) = (c1, s1), (c0, s0)
        else:
            s0, s1 = rng.sample(SHAPES, 2)
            c0 = _color(rng, s0, combos)
            c1 = _color(rng, s1, combos, exclude=[c0])
        specs = [(s0, c0, _size(rng)), (s1, c1, _size(rng))]
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    objects = place(rng, specs, relation)
    if category in ("two_object", "color_attr"):  # named once placed, so that the order can follow the scene
        named = reading_order(objects) if object_order == "reading" else objects
        with_color = category == "color_attr"
        meta["include"] = [{"class": o.shape, "count": 1} | ({"color": o.color} if with_color else {}) for o in named]
        prompt = "a photo of " + " and ".join(_a(o.phrase if with_color else o.shape) for o in named)
    meta["prompt"] = prompt
    return prompt, meta, Scene(objects)


# ----------------------------------------------------------------------------- understanding


def random_scene(
    rng: random.Random, n_objects: int | None = None, combos: Sequence[tuple[str, str]] = ALL_COMBOS
) -> Scene:
    """1-4 objects with distinct colour-shape combos, so 'the red circle' always names one object."""
    n = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    picked = rng.sample(list(combos), n)
    return Scene(place(rng, [(s, c, _size(rng)) for c, s in picked]))


def _unique(objects: Sequence[Obj], key: Callable[[Obj], str]) -> list[Obj]:
    return [o for o in objects if sum(key(p) == key(o) for p in objects) == 1]


def _qa_color(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    objs = _unique(scene.objects, lambda o: o.shape)
    if not objs:
        return None
    o = rng.choice(objs)
    return f"what color is the {o.shape}?", o.color


def _qa_shape(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    objs = _unique(scene.objects, lambda o: o.color)
    if not objs:
        return None
    o = rng.choice(objs)
    return f"what shape is the {o.color} object?", o.shape


def _qa_count(scene: Scene, rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("all", "shape", "color"))
    if kind == "all":
        return "how many objects are there?", str(len(scene.objects))
    if kind == "shape":
        shape = rng.choice(SHAPES)
        return f"how many {shape}s are there?", str(sum(o.shape == shape for o in scene.objects))
    color = rng.choice(tuple(COLORS))
    return f"how many {color} objects are there?", str(sum(o.color == color for o in scene.objects))


def _qa_position(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """Ask only about pairs whose centres differ by >= 0.15 on the asked axis (no borderline answers)."""
    objs = _unique(scene.objects, lambda o: o.phrase)
    pairs = [(a, b) for a in objs for b in objs if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        axes = [ax for ax, d in (("x", a.x - b.x), ("y", a.y - b.y)) if abs(d) >= 0.15]
        if axes:
            if rng.choice(axes) == "x":
                return f"is the {a.phrase} left or right of the {b.phrase}?", "left" if a.x < b.x else "right"
            return f"is the {a.phrase} above or below the {b.phrase}?", "above" if a.y < b.y else "below"
    return None


def _qa_exists(scene: Scene, rng: random.Random) -> tuple[str, str]:
    present = {(o.color, o.shape) for o in scene.objects}
    absent = [cs for cs in ALL_COMBOS if cs not in present]
    if rng.random() < 0.5 or not absent:
        color, shape, answer = *rng.choice(sorted(present)), "yes"
    else:
        color, shape, answer = *rng.choice(absent), "no"
    return f"is there {_a(color + ' ' + shape)}?", answer


def _qa_describe(scene: Scene, rng: random.Random) -> tuple[str, str]:
    return "describe the image.", describe(scene.objects)


_QA: dict[str, Callable[[Scene, random.Random], tuple[str, str] | None]] = {
    "color": _qa_color, "count": _qa_count, "shape": _qa_shape,
    "position": _qa_position, "exists": _qa_exists, "describe": _qa_describe,
}


def distinct_questions(scene: Scene, rng: random.Random, types: Sequence[str], n: int, tries: int,
                       asked: set[str] = frozenset()) -> list[tuple[str, str, str]]:
    """Up to ``n`` (question, answer, qtype) about ``scene``, each of a type drawn from ``types``, none
    repeated or in ``asked``, from at most ``tries`` draws (a type the scene cannot answer wastes one)."""
    found: dict[str, tuple[str, str, str]] = {}
    for _ in range(tries if n > 0 else 0):
        t = rng.choice(types)
        qa = _QA[t](scene, rng)
        if qa is not None and qa[0] not in asked:
            found.setdefault(qa[0], (*qa, t))
            if len(found) == n:
                break
    return list(found.values())


def make_qa(scene: Scene, rng: random.Random, qtype: str | None = None) -> tuple[str, str, str]:
    """A (question, short canonical answer, qtype) about ``scene``.

    A random type that the scene cannot answer unambiguously (e.g. 'what color is the circle?' with
    two circles) falls through to another type; count/exists/describe always apply.
    """
    order = [qtype] if qtype is not None else rng.sample(QA_TYPES, len(QA_TYPES))
    for t in order:
        qa = _QA[t](scene, rng)
        if qa is not None:
            return qa[0], qa[1], t
    raise ValueError(f"scene cannot answer a {qtype!r} question")


# ----------------------------------------------------------------------------- text stream


def make_sentence(rng: random.Random) -> str:
    """A true, grammatical sentence about the world, for the text-only stream."""
    shape, color = rng.choice(SHAPES), rng.choice(tuple(COLORS))
    kind = rng.randrange(7)
    if kind == 0:
        return f"{_a(color + ' ' + shape)} is {color}."
    if kind == 1:
        k = CORNERS[shape]
        return f"{_a(shape)} has {NUMBER_WORDS[k] if k else 'no'} corners."
    if kind == 2:
        n = rng.choice(COUNTS)
        k = CORNERS[shape]
        return f"{NUMBER_WORDS[n]} {shape}s have {NUMBER_WORDS[n * k] if k else 'no'} corners."
    if kind == 3:
        return f"a large {shape} is bigger than a small {shape}."
    if kind == 4:
        return rng.choice((f"{color} is a color.", f"{_a(shape)} is a shape.", "a circle is round."))
    if kind == 5:
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        return f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."
    (c0, s0), (c1, s1) = rng.sample(ALL_COMBOS, 2)
    return f"there is {_a(c0 + ' ' + s0)} {rng.choice(RELATIONS)} {_a(c1 + ' ' + s1)}."


# ----------------------------------------------------------------------------- vocabulary


def vocabulary() -> list[str]:
    """Every token any generator can emit (see ``split_words``), sorted; for a word-level tokenizer."""
    words = {
        *COLORS, *SHAPES, *(s + "s" for s in SHAPES), *SIZES, *NUMBER_WORDS, *PUNCTUATION,
        *(str(n) for n in range(MAX_OBJECTS + 1)),  # count answers
        *(w for rel in RELATIONS for w in rel.split()),
        # prompt, question, answer and sentence templates
        "a", "an", "photo", "of", "and", "what", "color", "shape", "is", "the", "object", "objects",
        "how", "many", "are", "there", "or", "describe", "image", "yes", "no", "has", "have",
        "corners", "bigger", "than", "round", "plus",
    }
    return sorted(words)


# ----------------------------------------------------------------------------- seeded sampler


def stable_rng(seed: int, task: str, index: int) -> random.Random:
    """A per-sample RNG from a stable hash (Python's ``hash`` of str is salted per process)."""
    digest = hashlib.blake2b(f"{seed}/{task}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class ShapesWorld:
    """Deterministic map-style access to the infinite world: sample ``i`` depends only on (seed, task, i).

    ``split`` only affects generation targets (``t2i_*``, ``class_sample``). Understanding and text
    (``qa_sample``, ``text_sample``) are the same in both splits and may show held-out combos: the
    model can learn to *recognise* a blue triangle, the held-out test is whether it can *draw* one.
    ``t2i_weights`` sets the category mix of ``t2i_sample``: relative weights, and a category left out
    is never drawn (uniform over the six by default; the heldout split has only its two categories);
    ``object_order`` which object its two-object prompts name first (``make_t2i``; evaluation prompts
    keep the default, GenEval's random order).
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        split: str = "train",
        t2i_weights: Mapping[str, float] | None = None,
        antialias: bool = False,
        object_order: str = "random",
    ) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
        if object_order not in ("random", "reading"):
            raise ValueError(f"object_order must be 'random' or 'reading', not {object_order!r}")
        self.seed, self.image_size, self.split, self.antialias = seed, image_size, split, antialias
        self.object_order = object_order
        allowed = CATEGORIES if split == "train" else HELDOUT_CATEGORIES
        weights = dict(t2i_weights) if t2i_weights is not None else {c: 1.0 for c in allowed}
        unknown = sorted(set(weights) - set(allowed))
        if unknown:
            raise ValueError(f"t2i_weights names {unknown}, not categories of the {split} split: use {list(allowed)}")
        if any(not w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(f"t2i_weights must be >= 0 with a positive sum (a category left out gets 0), got {weights}")
        self.categories, self.weights = list(weights), list(weights.values())

    def render(self, scene: Scene) -> Image.Image:
        return render(scene, self.image_size, self.antialias)

    def t2i_scene(self, index: int, category: str | None = None) -> tuple[str, dict, Scene]:
        rng = stable_rng(self.seed, f"t2i-{self.split}", index)
        category = category or rng.choices(self.categories, self.weights)[0]
        return make_t2i(category, rng, self.split, self.object_order)

    def t2i_sample(self, index: int, category: str | None = None) -> dict:
        """``{prompt, metadata, image}``; metadata is GenEval's format (its ``tag`` is the category)."""
        prompt, meta, scene = self.t2i_scene(index, category)
        return {"prompt": prompt, "metadata": meta, "image": self.render(scene)}

    def class_sample(self, index: int) -> dict:
        """``{label, class_name, image}``: one object of a Stage I class ('red circle'); ids index CLASS_NAMES."""
        rng = stable_rng(self.seed, f"class-{self.split}", index)
        color, shape = rng.choice(TRAIN_COMBOS if self.split == "train" else HELDOUT)
        scene = Scene(place(rng, [(shape, color, _size(rng))]))
        name = f"{color} {shape}"
        return {"label": CLASS_NAMES.index(name), "class_name": name, "image": self.render(scene)}

    def _qa(self, index: int) -> tuple[Scene, str, str, str]:
        """(scene, question, answer, qtype) of understanding sample ``index``."""
        rng = stable_rng(self.seed, "qa", index)
        scene = random_scene(rng)
        return (scene, *make_qa(scene, rng))

    def qa_sample(self, index: int) -> dict:
        """``{image, question, answer, qtype}`` on a random 1-4 object scene (all 18 combos may appear)."""
        scene, question, answer, qtype = self._qa(index)
        return {"image": self.render(scene), "question": question, "answer": answer, "qtype": qtype}

    def qa_conversation(self, index: int, turns: int) -> dict:
        """``{image, conversations}``: up to ``turns`` distinct questions about one scene, as a multi-turn
        chat (LLaVA-style records are multi-turn too). One image then supervises several answers, which
        multiplies the understanding signal per image token. The first turn is ``qa_sample(index)``'s
        question, so ``turns=1`` gives the same data. Up to six turns ask one question of each type the
        scene can answer; beyond six, further distinct questions of random types (relations and
        presence take far more questions to learn than attributes: configs/shapes/README.md)."""
        scene, question, answer, qtype = self._qa(index)
        rng = stable_rng(self.seed, "qa-turns", index)
        qas = [(question, answer)]
        for other in rng.sample([t for t in QA_TYPES if t != qtype], len(QA_TYPES) - 1):
            if len(qas) >= turns:
                break
            qa = _QA[other](scene, rng)  # None when the scene cannot answer this type unambiguously
            if qa is not None:
                qas.append(qa)
        if turns > len(QA_TYPES):  # a few draws per turn: small scenes run out of distinct questions
            more = distinct_questions(scene, rng, QA_TYPES, turns - len(qas), 4 * turns, {q for q, _ in qas})
            qas += [(q, a) for q, a, _ in more]
        chat = [{"role": role, "content": text} for qa in qas for role, text in zip(("user", "assistant"), qa)]
        return {"image": self.render(scene), "conversations": chat}

    def text_sample(self, index: int) -> dict:
        return {"text": make_sentence(stable_rng(self.seed, "text", index))}
