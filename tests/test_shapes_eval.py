"""ShapesEval: the detector is validated on rendered ground truth (clean and degraded), the scorer
follows GenEval's rules and can fail, and the summaries match GenEval's definitions."""

import copy
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lit_janus.shapes.evaluate import (
    Detection,
    colour_confusions,
    detect,
    evaluate,
    format_table,
    relative_position,
    score_one,
    vqa_accuracy,
    why_failed,
)
from lit_janus.shapes.world import CATEGORIES, COLORS, SHAPES, SIZES, Obj, Scene, ShapesWorld, render

N_PER_CATEGORY = 200


@pytest.fixture(scope="module")
def ground_truth():
    """200 rendered ground-truth samples per category, with their detections."""
    w = ShapesWorld(seed=123, image_size=64)
    out = {}
    for cat in CATEGORIES:
        samples = [w.t2i_sample(i, cat) for i in range(N_PER_CATEGORY)]
        out[cat] = [(s["image"], s["metadata"], detect(s["image"])) for s in samples]
    return out


def test_detector_scores_ground_truth_perfectly(ground_truth):
    """Issue 5 asks >= 99%; the renders score 1.00 in every category (also on 500 per category, both
    splits, seeds 0 and 90001), so anything less is a regression."""
    images = [img for cat in CATEGORIES for img, _, _ in ground_truth[cat]]
    metas = [meta for cat in CATEGORIES for _, meta, _ in ground_truth[cat]]
    result = evaluate(images, metas)
    for cat in CATEGORIES:
        assert result[cat] == 1.0, (cat, result)
    assert result["overall"] == 1.0


def test_detections_match_the_scene_exactly():
    w = ShapesWorld(seed=9)
    for i in range(100):
        _, _, scene = w.t2i_scene(i)
        dets = detect(w.render(scene))
        assert len(dets) == len(scene.objects)
        for o in scene.objects:
            d = min(dets, key=lambda d: (d.cx - o.x) ** 2 + (d.cy - o.y) ** 2)
            assert (d.shape, d.color, d.size) == (o.shape, o.color, o.size)
            assert abs(d.cx - o.x) < 1.5 / 64 and abs(d.cy - o.y) < 1.5 / 64


def _corrupt(meta: dict) -> dict:
    """The same prompt made false for its ground-truth scene (what a wrong generation would look like)."""
    m = copy.deepcopy(meta)
    inc = m["include"]
    other = lambda cls: [s for s in SHAPES if s not in {r["class"] for r in inc}][0]
    if m["tag"] == "single_object":
        inc[0]["class"] = other(inc[0]["class"])
    elif m["tag"] == "two_object":
        inc[1]["class"] = other(inc[1]["class"])
    elif m["tag"] == "counting":  # ask for one more (include fails) or one fewer (exclude fires)
        delta = 1 if inc[0]["count"] % 2 else -1
        inc[0]["count"] += delta
        m["exclude"][0]["count"] += delta
    elif m["tag"] == "colors":
        inc[0]["color"] = next(c for c in COLORS if c != inc[0]["color"])
    elif m["tag"] == "position":
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        inc[1]["position"][0] = flip[inc[1]["position"][0]]
    elif m["tag"] == "color_attr":  # attribute binding: swap the colours between the two objects
        inc[0]["color"], inc[1]["color"] = inc[1]["color"], inc[0]["color"]
    return m


def test_scorer_fails_mismatched_metadata(ground_truth):
    for cat in CATEGORIES:
        wrong = np.mean([score_one(dets, _corrupt(meta)) for _, meta, dets in ground_truth[cat]])
        assert wrong <= 0.01, (cat, wrong)  # measured: 0.00


def _jpeg(img: Image.Image, quality: int = 75) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _vq_like(img: Image.Image, seed: int) -> Image.Image:
    """Blur (lost high frequencies) + colour noise + JPEG: a stand-in for a VQ reconstruction."""
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(0.7)), np.float32)
    a += np.random.default_rng(seed).normal(0, 8, a.shape)
    return _jpeg(Image.fromarray(a.clip(0, 255).astype(np.uint8)))


@pytest.mark.parametrize("antialias", [False, True])
def test_detector_is_robust_to_degraded_images(antialias):
    """Documented rate: >= 95% per category at 64 px under blur 0.7 + N(0, 8) noise + JPEG q75.
    Measured (seed 123, 200/category): 0.995-1.00 flat renders, 0.98-1.00 antialiased renders."""
    w = ShapesWorld(seed=123, image_size=64, antialias=antialias)
    for cat in CATEGORIES:
        acc = np.mean([
            score_one(_vq_like(s["image"], i), s["metadata"]) for i in range(100) for s in [w.t2i_sample(i, cat)]
        ])
        assert acc >= 0.95, (cat, acc)


def test_detector_tolerates_off_palette_colours():
    """Generated colours drift; a +-30 per-channel shift of the whole image must not change the score."""
    w = ShapesWorld(seed=5)
    rng = np.random.default_rng(0)
    for i in range(60):
        s = w.t2i_sample(i, CATEGORIES[i % 6])
        a = np.asarray(s["image"], np.float32) + rng.uniform(-30, 30, 3)
        assert score_one(Image.fromarray(a.clip(0, 255).astype(np.uint8)), s["metadata"])


@pytest.mark.parametrize("size", [128, 384])
def test_detector_works_at_larger_resolutions(size):
    w = ShapesWorld(seed=1, image_size=size)
    for i in range(12):
        s = w.t2i_sample(i, CATEGORIES[i % 6])
        assert score_one(s["image"], s["metadata"]) and score_one(_vq_like(s["image"], i), s["metadata"])


def _touching_pairs(n: int, seed: int = 0):
    """Two objects of different colours whose boxes overlap by 0-2.5 px: renders never draw this
    (GAP), generated images can."""
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    for _ in range(n):
        a, b = rng.choice(len(colors), 2, replace=False)
        (sa, sb), (za, zb) = rng.choice(SHAPES, 2), rng.choice(list(SIZES), 2)
        half = (SIZES[za] + SIZES[zb]) / 2
        cx, dx = 0.5 - half / 2, half - rng.uniform(0, 2.5) / 64
        scene = Scene([Obj(sa, colors[a], za, cx, 0.5), Obj(sb, colors[b], zb, cx + dx, 0.5 + rng.uniform(-0.05, 0.05))])
        yield scene, sorted([(sa, colors[a]), (sb, colors[b])])


def test_detector_separates_touching_objects_of_different_colours():
    """One blob of two colours is two objects. Measured (100 pairs): 1.00 clean, 0.95 degraded; before
    the split by colour, 0.22 and 0.33 (the pair became one "other" or one wrong shape)."""
    clean, degraded = [], []
    for i, (scene, want) in enumerate(_touching_pairs(100)):
        img = render(scene)
        clean.append(sorted((d.shape, d.color) for d in detect(img)) == want)
        degraded.append(sorted((d.shape, d.color) for d in detect(_vq_like(img, i))) == want)
    assert np.mean(clean) == 1.0 and np.mean(degraded) >= 0.9, (np.mean(clean), np.mean(degraded))


def test_colour_fringes_do_not_split_an_object():
    """Blurred orange edges read as yellow (a ring of ~25 px, more than the smallest object's area):
    an object with only a fringe of another colour stays one object."""
    w = ShapesWorld(seed=123, image_size=64)
    for i in (29, 60, 74, 98):  # single orange objects whose degraded fringe is >= MIN_AREA of yellow
        s = w.t2i_sample(i, "single_object")
        assert len(detect(_vq_like(s["image"], i))) == 1, i


def test_an_object_shaded_between_two_colours_stays_one_object():
    """VQ reconstructions shade some objects from one palette colour into another (purple into red):
    the blob is one shape, so it is one object. Splitting it cut 38 of 600 reconstructions."""
    for shape in SHAPES:
        a = np.array(render(Scene([Obj(shape, "purple", "large", 0.5, 0.5)])))
        obj = (a == COLORS["purple"]).all(-1)
        a[obj & (np.arange(64) >= 32)[None, :]] = COLORS["red"]  # right half red
        dets = detect(Image.fromarray(a))
        assert [d.shape for d in dets] == [shape], (shape, dets)


def test_detector_ignores_specks_and_background():
    assert detect(Image.new("RGB", (64, 64), (240, 240, 240))) == []
    scene = Scene([Obj("square", "red", "large", 0.3, 0.3), Obj("circle", "blue", "small", 0.7, 0.7)])
    a = np.array(render(scene))
    for y, x in [(5, 55), (58, 4), (40, 10)]:
        a[y : y + 2, x : x + 2] = COLORS["green"]  # 2x2 specks: noise, not objects
    a[0:10, 40:50] = (128, 128, 128)  # a grey patch is not a palette colour
    a[60, 5:40] = COLORS["orange"]  # a streak is a blob but no shape
    dets = detect(Image.fromarray(a))
    assert sorted((d.shape, d.color) for d in dets) == [("circle", "blue"), ("other", "orange"), ("square", "red")]


def _det(shape, cx, cy, side=0.2, color="red"):
    half = side / 2
    return Detection(shape, color, "small", cx, cy, side * side, (cx - half, cy - half, cx + half, cy + half))


def test_relative_position_follows_geneval():
    assert relative_position(_det("circle", 0.2, 0.5), _det("square", 0.7, 0.5)) == {"left of"}
    assert relative_position(_det("circle", 0.5, 0.8), _det("square", 0.5, 0.2)) == {"below"}
    assert relative_position(_det("circle", 0.2, 0.2), _det("square", 0.8, 0.8)) == {"left of", "above"}
    assert relative_position(_det("circle", 0.5, 0.5), _det("square", 0.55, 0.5)) == set()  # within threshold


def test_score_one_geneval_rules():
    three = [_det("circle", x, 0.5) for x in (0.2, 0.5, 0.8)]
    counting = {"tag": "counting", "include": [{"class": "circle", "count": 2}],
                "exclude": [{"class": "circle", "count": 3}]}
    assert not score_one(three, counting)  # too many: the exclude clause fires
    assert score_one(three, {"tag": "single_object", "include": [{"class": "circle", "count": 1}]})  # "at least"
    pos = {"tag": "position", "include": [{"class": "square", "count": 1},
                                          {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert score_one([_det("square", 0.8, 0.5), _det("circle", 0.2, 0.5)], pos)
    assert not score_one([_det("square", 0.2, 0.5), _det("circle", 0.8, 0.5)], pos)
    assert not score_one([_det("circle", 0.2, 0.5)], pos)  # no target
    colour = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}]}
    assert score_one([_det("circle", 0.2, 0.5), _det("circle", 0.8, 0.5, color="blue")], colour)
    assert not score_one([_det("circle", 0.2, 0.5), _det("square", 0.8, 0.5, color="blue")], colour)


def test_evaluate_overall_is_mean_of_category_accuracies():
    w = ShapesWorld(seed=0)
    good = [w.t2i_sample(i, "colors") for i in range(3)]
    bad = w.t2i_sample(0, "counting")
    images = [s["image"] for s in good] + [bad["image"]]
    metas = [s["metadata"] for s in good] + [_corrupt(bad["metadata"])]
    result = evaluate(images, metas)
    assert result == {"colors": 1.0, "counting": 0.0, "overall": 0.5}  # sample mean would be 0.75


def test_format_table_uses_geneval_column_order():
    result = dict(zip(CATEGORIES, [0.99, 0.89, 0.59, 0.90, 0.79, 0.66])) | {"overall": 0.80}
    table = format_table(result, name="ours")
    header, sep, row = table.splitlines()
    assert header == "| Method | Single Obj. | Two Obj. | Counting | Colors | Position | Color Attri. | Overall |"
    assert row == "| ours | 0.99 | 0.89 | 0.59 | 0.90 | 0.79 | 0.66 | 0.80 |" and sep.count("---") == 8
    assert format_table({"colors": 1.0, "overall": 1.0}, header=False) == "| - | - | - | 1.00 | - | - | 1.00 |"


def test_vqa_accuracy_normalises():
    assert vqa_accuracy(["Three.", "the Red circle", " yes ", "left"], ["3", "red circle", "yes", "right"]) == 0.75
    assert vqa_accuracy(["A red circle, and a blue square"], ["a red circle and a blue square"]) == 1.0
    assert vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [])


def _scene(*objs: tuple[str, str, float, float]) -> Image.Image:
    return render(Scene([Obj(shape, color, "large", x, y) for shape, color, x, y in objs]), 64)


def test_colour_confusions_name_the_drawn_colour_and_whether_it_leaked():
    attr = {"tag": "color_attr", "include": [{"class": "square", "count": 1, "color": "red"},
                                             {"class": "circle", "count": 1, "color": "blue"}]}
    left, right = (0.2, 0.5), (0.8, 0.5)
    assert colour_confusions(_scene(("square", "red", *left), ("circle", "blue", *right)), attr) == []
    # the circle takes the square's colour (binding), then a third colour (precision)
    assert colour_confusions(_scene(("square", "red", *left), ("circle", "red", *right)), attr) == [("blue", "red", True)]
    assert colour_confusions(_scene(("square", "orange", *left), ("circle", "blue", *right)), attr) == [
        ("red", "orange", False)]
    # a missing shape is not a colour confusion; a shape drawn twice, once right, is none either
    assert colour_confusions(_scene(("square", "red", *left)), attr) == []
    assert colour_confusions(_scene(("square", "red", *left), ("square", "green", 0.5, 0.2),
                                    ("circle", "blue", *right)), attr) == []
    colors = {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "yellow"}]}
    assert colour_confusions(_scene(("triangle", "orange", *left)), colors) == [("yellow", "orange", False)]
    assert colour_confusions(_scene(("triangle", "orange", *left)), {"tag": "single_object",
                                                                      "include": [{"class": "triangle", "count": 1}]}) == []


def test_failure_table_counts_reasons_and_colour_confusions():
    import torch

    from lit_janus.shapes.evaluate_model import Generated, failure_table

    attr = {"tag": "color_attr", "include": [{"class": "square", "count": 1, "color": "red"},
                                             {"class": "circle", "count": 1, "color": "blue"}]}
    left, right = (0.2, 0.5), (0.8, 0.5)
    scenes = [_scene(("square", "red", *left), ("circle", "blue", *right)),  # passes
              _scene(("square", "red", *left), ("circle", "red", *right)),  # leaked
              _scene(("square", "orange", *left), ("circle", "red", *right))]  # both wrong, one leaked
    images = torch.from_numpy(np.stack([np.asarray(s) for s in scenes]))
    table = failure_table({"train": Generated.detect(["p"] * 3, [attr] * 3, images)}).splitlines()
    assert table[0] == "train color_attr: wrong colour 2, pass 1"
    assert table[1] == ("train colour confusions (named -> drawn, shape right, colour never): blue -> red 2, "
                        "red -> orange 1; 2 of 3 are another named object's colour")


def test_failure_table_counts_what_counting_prompts_drew_per_number_asked():
    import torch

    from lit_janus.shapes.evaluate_model import Generated, failure_table

    def asked(n):
        return {"tag": "counting", "include": [{"class": "circle", "count": n}],
                "exclude": [{"class": "circle", "count": n + 1}]}

    at = [(0.2, 0.25), (0.75, 0.25), (0.2, 0.75), (0.75, 0.75)]
    circles = [("circle", "red", x, y) for x, y in at]
    scenes = [(asked(2), _scene(*circles[:2])),  # right
              (asked(2), _scene(*circles[:3])),  # one too many
              (asked(3), _scene(*circles[:2], ("square", "blue", *at[2]))),  # one short; the square not counted
              (asked(3), _scene(*circles))]  # one too many
    metas = [m for m, _ in scenes]
    images = torch.from_numpy(np.stack([np.asarray(s) for _, s in scenes]))
    table = failure_table({"train": Generated.detect(["p"] * 4, metas, images)}).splitlines()
    assert table[0] == "train counting: extra objects 2, pass 1, wrong count 1"
    assert table[1] == "train counting, asked: drawn x images (shapes of the named kind): 2: 2 x1, 3 x1; 3: 2 x1, 4 x1"


def test_why_failed_names_the_reason_a_generated_image_fails():
    two = {"tag": "two_object", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1}]}
    attr = {"tag": "color_attr", "include": [{"class": "square", "count": 1, "color": "red"},
                                             {"class": "circle", "count": 1, "color": "blue"}]}
    count = {"tag": "counting", "include": [{"class": "circle", "count": 3}], "exclude": [{"class": "circle", "count": 4}]}
    pos = {"tag": "position", "include": [{"class": "square", "count": 1},
                                          {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    left, right, mid = (0.2, 0.5), (0.8, 0.5), (0.5, 0.2)
    cases = [
        (two, [("square", "red", *left), ("circle", "blue", *right)], None),
        (two, [("square", "red", *left), ("square", "blue", *right)], "missing shape"),  # one shape twice
        (two, [("square", "red", *left)], "too few objects"),
        (attr, [("square", "red", *left), ("circle", "blue", *right)], None),
        (attr, [("square", "blue", *left), ("circle", "red", *right)], "colours swapped"),
        (attr, [("square", "red", *left), ("circle", "green", *right)], "wrong colour"),
        (count, [("circle", "red", *left), ("circle", "red", *right), ("square", "red", *mid)], "wrong count"),
        (count, [("circle", "red", *left), ("circle", "red", *right), ("circle", "red", *mid),
                 ("circle", "red", 0.5, 0.8)], "extra objects"),
        (pos, [("circle", "red", *left), ("square", "blue", *right)], None),
        (pos, [("square", "red", *left), ("circle", "blue", *right)], "wrong position"),
    ]
    for meta, objs, reason in cases:
        assert why_failed(_scene(*objs), meta) == reason, (meta["tag"], objs)
    # the ground truth of every category passes
    w = ShapesWorld(seed=11)
    for cat in CATEGORIES:
        for i in range(20):
            sample = w.t2i_sample(i, cat)
            assert why_failed(sample["image"], sample["metadata"]) is None


# ---- the counting probe ---------------------------------------------------------------------------
def test_last_row_is_the_last_token_row_render_paints():
    import random

    from lit_janus.shapes.count_probe import last_row
    from lit_janus.shapes.world import random_scene

    rng = random.Random(3)
    for _ in range(200):
        scene = random_scene(rng)
        painted = np.flatnonzero((np.asarray(render(scene)) != np.asarray(scene.background)).any(axis=(1, 2)))
        assert last_row(scene, 64, 8) == painted.max() // 8


def test_top_scenes_hold_the_count_asked_within_the_rows():
    from lit_janus.shapes.count_probe import last_row, top_scenes

    scenes = top_scenes(4, "triangle", 5, 5, image_size=64, grid=8, seed=1)
    assert len(scenes) == 5
    for scene, rows in scenes:
        assert [o.shape for o in scene.objects] == ["triangle"] * 4
        assert rows == last_row(scene, 64, 8) + 1 <= 5
    assert top_scenes(4, "triangle", 5, 5, image_size=64, grid=8, seed=1) == scenes  # seeded
    with pytest.raises(ValueError, match="max_rows"):
        top_scenes(2, "circle", 1, 8, image_size=64, grid=8, seed=0)


def test_shapes_added_counts_extra_shapes_of_the_named_kind_and_others():
    from lit_janus.shapes.count_probe import shapes_added

    circles = [Obj("circle", c, "small", x, 0.2) for c, x in (("red", 0.2), ("blue", 0.5), ("green", 0.8))]
    assert shapes_added(render(Scene(circles)), "circle", 2) == (1, 0)
    assert shapes_added(render(Scene(circles + [Obj("square", "red", "large", 0.5, 0.7)])), "circle", 3) == (0, 1)
    assert shapes_added(render(Scene(circles[:1])), "circle", 2) == (-1, 0)


def test_count_probe_runs_every_condition_on_a_tiny_model():
    import torch

    from lit_janus.checkpoint import build_model, processor_for
    from lit_janus.config import Config
    from lit_janus.shapes.count_probe import count_probe, format_table

    cfg = Config.from_name("shapes", n_layer=1, n_embd=64, n_head=2, n_query_groups=2, intermediate_size=128)
    processor = processor_for("shapes", cfg)
    cfg.image_token_id = processor.image_id
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cells = count_probe(model, processor, per=1, max_rows=5, counts=(3, 4), cfg_weight=3.0)
    # N + 1 = 5 is past ShapesWorld's counts: no "one short" row for 4
    assert sorted(cells) == [("complete", 3), ("complete", 4), ("one short", 3), ("reconstruction", 3),
                             ("reconstruction", 4)]
    assert all(len(c.rows) == 3 and max(c.rows) <= 5 and sum(c.added.values()) == 3 for c in cells.values())
    table = format_table(cells)
    assert table.count("\n| reconstruction |") == 2 and "| one short | 3 | 4 | 3 |" in table
