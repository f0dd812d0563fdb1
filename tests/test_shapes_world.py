"""ShapesWorld: determinism, held-out combos, GenEval metadata format, Q/A truth, vocabulary coverage."""

import collections
import random
import subprocess
import sys

import numpy as np
import pytest

from lit_janus.shapes.world import (
    BACKGROUND,
    CATEGORIES,
    CLASS_NAMES,
    COLORS,
    HELDOUT,
    NUMBER_WORDS,
    SHAPES,
    QA_TYPES,
    Obj,
    Scene,
    ShapesWorld,
    clearly,
    label_map,
    make_qa,
    random_scene,
    reading_order,
    render,
    split_words,
    vocabulary,
)


def _same(a: dict, b: dict) -> bool:
    return all(
        np.array_equal(np.asarray(a[k]), np.asarray(b[k])) if k == "image" else a[k] == b[k] for k in a
    ) and a.keys() == b.keys()


def test_samples_are_deterministic_in_seed_and_index():
    w1, w2, other = ShapesWorld(seed=3), ShapesWorld(seed=3), ShapesWorld(seed=4)
    for i in (0, 1, 17, 10**9):
        for method in ("t2i_sample", "class_sample", "qa_sample", "text_sample"):
            assert _same(getattr(w1, method)(i), getattr(w2, method)(i)), (method, i)
    # Access order does not matter (map-style, any worker/rank can ask for any index).
    assert _same(ShapesWorld(seed=3).t2i_sample(5), w1.t2i_sample(5))
    prompts = lambda w: [w.t2i_sample(i)["prompt"] for i in range(30)]
    assert prompts(w1) != prompts(other)
    assert len(set(prompts(w1))) > 10


def test_determinism_survives_python_hash_salt():
    code = "from lit_janus.shapes.world import ShapesWorld; w = ShapesWorld(seed=7); " \
           "print([w.t2i_sample(i)['prompt'] for i in range(5)], w.text_sample(3), w.qa_sample(2)['question'])"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(s), "PYTHONPATH": ":".join(sys.path)}).stdout
        for s in (1, 2)
    }
    assert len(outs) == 1 and "a photo of" in outs.pop()


def _combos(meta: dict, scene: Scene) -> set[tuple[str, str]]:
    named = {(r["color"], r["class"]) for r in meta["include"] if "color" in r}
    return named | {(o.color, o.shape) for o in scene.objects}


def test_heldout_combos_never_generation_targets_in_train():
    w = ShapesWorld(seed=0, split="train")
    seen = set()
    for i in range(3000):
        _, meta, scene = w.t2i_scene(i)
        seen |= _combos(meta, scene)
        assert not _combos(meta, scene) & set(HELDOUT), (i, meta)
    for i in range(1000):
        assert tuple(w.class_sample(i)["class_name"].split()) not in HELDOUT
    assert seen == {(c, s) for c in COLORS for s in SHAPES} - set(HELDOUT)  # everything else does appear


def test_heldout_split_targets_heldout_combos():
    w = ShapesWorld(seed=0, split="heldout")
    named = collections.Counter()
    for i in range(300):
        _, meta, scene = w.t2i_scene(i)
        assert meta["tag"] in ("colors", "color_attr")
        hits = {(r["color"], r["class"]) for r in meta["include"]} & set(HELDOUT)
        assert hits and hits <= {(o.color, o.shape) for o in scene.objects}
        named.update(hits)
    assert set(named) == set(HELDOUT)
    assert {tuple(w.class_sample(i)["class_name"].split()) for i in range(100)} == set(HELDOUT)
    with pytest.raises(ValueError):
        w.t2i_sample(0, "counting")


# Structure of GenEval's evaluation_metadata.jsonl, per tag: top-level keys and include-entry keys.
GENEVAL_SCHEMA = {
    "single_object": ({"tag", "include", "prompt"}, [{"class", "count"}]),
    "two_object": ({"tag", "include", "prompt"}, [{"class", "count"}] * 2),
    "counting": ({"tag", "include", "exclude", "prompt"}, [{"class", "count"}]),
    "colors": ({"tag", "include", "prompt"}, [{"class", "count", "color"}]),
    "position": ({"tag", "include", "prompt"}, [{"class", "count"}, {"class", "count", "position"}]),
    "color_attr": ({"tag", "include", "prompt"}, [{"class", "count", "color"}] * 2),
}


@pytest.mark.parametrize("category", CATEGORIES)
def test_t2i_metadata_is_geneval_format_and_scene_satisfies_it(category):
    w = ShapesWorld(seed=1)
    for i in range(100):
        prompt, meta, scene = w.t2i_scene(i, category)
        keys, include_keys = GENEVAL_SCHEMA[category]
        assert set(meta) == keys and meta["tag"] == category and meta["prompt"] == prompt
        assert [set(r) for r in meta["include"]] == include_keys
        assert prompt.startswith("a photo of ")
        classes = [r["class"] for r in meta["include"]]
        assert len(set(classes)) == len(classes)  # GenEval never pairs a class with itself
        for r in meta["include"]:
            objs = [o for o in scene.objects if o.shape == r["class"] and o.color == r.get("color", o.color)]
            assert len(objs) == r["count"], (prompt, scene)
            assert r["class"] in prompt and r.get("color", "") in prompt
        assert len(scene.objects) == sum(r["count"] for r in meta["include"])  # no distractors
        if category == "counting":
            n = meta["include"][0]["count"]
            assert meta["exclude"] == [{"class": classes[0], "count": n + 1}]
            assert f"{NUMBER_WORDS[n]} {classes[0]}s" in prompt
        if category == "position":
            rel, target = meta["include"][1]["position"]
            assert target == 0 and f"{classes[1]} {rel} a {classes[0]}" in prompt
            by_shape = {o.shape: o for o in scene.objects}
            assert clearly(rel, by_shape[classes[1]], by_shape[classes[0]])
        if category == "color_attr":
            assert meta["include"][0]["color"] != meta["include"][1]["color"]


@pytest.mark.parametrize("category", ["two_object", "color_attr"])
def test_reading_order_names_first_the_object_a_raster_scan_draws_first(category):
    random_w, reading_w = ShapesWorld(seed=4), ShapesWorld(seed=4, object_order="reading")
    first_drawn_named_first = {"random": 0, "reading": 0}
    n = 300
    for i in range(n):
        for order, w in (("random", random_w), ("reading", reading_w)):
            prompt, meta, scene = w.t2i_scene(i, category)
            # the 8 x 8-token raster scan of a 64-px image: the first token row / column holding the object
            first_token = []
            for o in scene.objects:
                ink = (np.abs(np.asarray(render(Scene([o]), 64), dtype=int) - BACKGROUND).sum(-1) > 30)
                first_token.append(np.flatnonzero(ink.reshape(8, 8, 8, 8).any(axis=(1, 3)))[0])
            drawn_first = scene.objects[int(np.argmin(first_token))]
            first_drawn_named_first[order] += meta["include"][0]["class"] == drawn_first.shape
            if order == "reading":
                assert reading_order(scene.objects)[0].shape == meta["include"][0]["class"]
                # the same scene as the random-order world: only which object is named first changes
                _, random_meta, random_scene_ = random_w.t2i_scene(i, category)
                assert random_scene_ == scene
                assert sorted(map(str, meta["include"])) == sorted(map(str, random_meta["include"]))
    assert first_drawn_named_first["reading"] >= 0.97 * n  # objects whose tops share a token row may tie
    assert 0.35 * n < first_drawn_named_first["random"] < 0.65 * n  # GenEval's prompts carry no order
    with pytest.raises(ValueError, match="object_order"):
        ShapesWorld(object_order="left")
    # the data module's source passes the order on (a stage config sets it per t2i source)
    from lit_janus.data import ShapesSource

    source = ShapesSource("t2i", seed=4, object_order="reading")
    assert [source[i]["caption"] for i in range(20)] == [reading_w.t2i_sample(i)["prompt"] for i in range(20)]


def test_objects_never_overlap_and_stay_inside():
    w = ShapesWorld(seed=2)
    for i in range(500):
        scene = w.t2i_scene(i, "counting")[2] if i % 2 else w.t2i_scene(i)[2]
        for a in scene.objects:
            assert a.extent / 2 <= a.x <= 1 - a.extent / 2 and a.extent / 2 <= a.y <= 1 - a.extent / 2
            for b in scene.objects:
                if a is not b:
                    need = (a.extent + b.extent) / 2
                    assert abs(a.x - b.x) >= need or abs(a.y - b.y) >= need


@pytest.mark.parametrize("size", [64, 128, 384])
def test_render_sizes_and_flat_palette_colours(size):
    scene = Scene([Obj("circle", "red", "large", 0.25, 0.25), Obj("square", "blue", "small", 0.75, 0.3),
                   Obj("triangle", "yellow", "large", 0.5, 0.75)])
    img = render(scene, size)
    assert img.size == (size, size) and img.mode == "RGB"
    px = np.asarray(img).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(px, axis=0)}
    assert colours == {BACKGROUND, COLORS["red"], COLORS["blue"], COLORS["yellow"]}
    # Fill fractions follow the geometry: square box fully, circle ~pi/4, triangle ~1/2 of a 0.28 box.
    frac = lambda rgb: (px == rgb).all(1).mean() / 0.28**2
    assert abs(frac(COLORS["red"]) - np.pi / 4) < 0.08 and abs(frac(COLORS["yellow"]) - 0.5) < 0.08
    assert abs((px == COLORS["blue"]).all(1).mean() / 0.18**2 - 1) < 0.15
    assert ShapesWorld(image_size=size, antialias=True).t2i_sample(0)["image"].size == (size, size)


def test_label_map_marks_exactly_the_rendered_pixels_of_each_object():
    rng = random.Random(3)
    for _ in range(100):
        scene = random_scene(rng)
        rgb, labels = np.asarray(render(scene)), np.asarray(label_map(scene))
        assert ((rgb != BACKGROUND).any(-1) == (labels > 0)).all()
        for i, o in enumerate(scene.objects):  # each object's pixels carry its colour
            assert (rgb[labels == i + 1] == COLORS[o.color]).all()


def test_patch_symbols_name_the_object_under_each_patch():
    from lit_janus.shapes.oracle_vqa import patch_symbols, vocabulary

    scene = Scene([Obj("square", "red", "large", 0.25, 0.25), Obj("circle", "blue", "small", 0.75, 0.75)])
    grid = np.array(patch_symbols(scene)).reshape(8, 8)
    assert grid[2, 2] == "<red_square>" and grid[6, 6] == "<blue_circle>"  # (row, column) of each centre
    assert grid[0, 7] == grid[7, 0] == "<bg>"
    assert set(grid.ravel()) == {"<bg>", "<red_square>", "<blue_circle>"}
    assert (grid == "<red_square>").sum() > (grid == "<blue_circle>").sum()
    assert set(patch_symbols(scene)) <= set(vocabulary())


def test_oracle_examples_supervise_the_answer_of_every_turn():
    """Multi-turn oracle draws: distinct questions about one scene, and labels on each turn's answer
    words and end token, nowhere else."""
    from lit_janus.shapes.oracle_vqa import Examples, vocabulary

    words = vocabulary()
    one, many = Examples(("position", "color"), seed=3), Examples(("position", "color"), seed=3, turns=4)
    x, y, drawn = many.batch(16)
    assert max((len(parts) + 1) // 2 for _, parts, _ in drawn) == 4  # some scenes answer four distinct questions
    for r, (prompt, parts, _) in enumerate(drawn):
        text = " ".join(words[i] for i in x[r].tolist()).replace(" <pad>", "")
        turns = [t.strip() for t in text.split("<eos>") if t.strip()]
        questions = [t.split(" <answer> ")[0].split("> ")[-1] for t in turns]  # the image symbols come first
        assert len(turns) == (len(parts) + 1) // 2 and len(set(questions)) == len(questions)
        supervised = [words[i] for i in y[r].tolist() if i >= 0]
        assert supervised == [w for t in turns for w in (t.split(" <answer> ")[1].split() + ["<eos>"])]
        assert supervised[0] in {"left", "right", "above", "below", *COLORS}
    # one turn: the one-question layout, the answer right after the prompt's closing <answer>
    x1, y1, drawn1 = one.batch(4)
    for r, (prompt, parts, _) in enumerate(drawn1):
        assert len(parts) == 1 and (y1[r] >= 0).sum() == len(parts[0])
        assert x1[r, len(prompt) - 1] == one.ids["<answer>"] and y1[r, len(prompt) - 1] == parts[0][0]
    with pytest.raises(ValueError, match="turns"):
        Examples(("color",), seed=0, turns=0)


def test_scratchpad_answers_name_both_objects_grid_cells_before_the_relation():
    from lit_janus.shapes.oracle_vqa import Examples, scratchpad_answer, vocabulary

    scene = Scene([Obj("square", "red", "large", 0.25, 0.25), Obj("circle", "blue", "small", 0.8, 0.7)])
    assert scratchpad_answer(scene, "is the red square left or right of the blue circle?", "left", "position") \
        == "c2 c6 left"
    assert scratchpad_answer(scene, "is the blue circle above or below the red square?", "below", "position") \
        == "r5 r2 below"
    assert scratchpad_answer(scene, "what color is the circle?", "blue", "color") == "blue"
    with pytest.raises(ValueError, match="position question"):
        scratchpad_answer(scene, "where is the red square?", "left", "position")
    # in the draws: every position answer is grid, grid, relation, and agrees with the cells it names
    words = vocabulary(scratchpad=True)
    assert words[:len(vocabulary())] == vocabulary()  # the grid tokens are appended: other ids unchanged
    examples = Examples(("position", "exists"), seed=1, turns=4, scratchpad=True)
    n_position = 0
    for prompt, parts, _ in (examples.draw() for _ in range(40)):
        for answer in parts[0::2]:
            a = [words[i] for i in answer]
            if len(a) == 4:
                n_position += 1
                (g1, i1), (g2, i2) = (a[0][0], int(a[0][1:])), (a[1][0], int(a[1][1:]))
                assert g1 == g2 and i1 != i2 and a[3] == "<eos>"
                assert a[2] == {("c", True): "left", ("c", False): "right", ("r", True): "above",
                                ("r", False): "below"}[g1, i1 < i2]
            else:
                assert a[0] in {"yes", "no"}
    assert n_position > 20


def test_scratchpad_accuracy_scores_the_relation_the_model_writes_after_its_grid_tokens():
    """A stand-in model that always writes "left": grounding is never right, and position is right on
    exactly the held-out questions whose relation is "left"."""
    import torch

    from lit_janus.shapes.oracle_vqa import Examples, accuracy

    examples = Examples(("position",), seed=2, scratchpad=True)
    left = examples.ids["left"]

    class AlwaysLeft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full_like(x, left), len(examples.ids)).float()

    expected = [parts[0][2] == left for _, parts, _ in Examples(("position",), seed=2, scratchpad=True).batch(60)[2]]
    scores = accuracy(AlwaysLeft(), examples, 60)
    assert scores == {"position": round(sum(expected) / 60, 3), "position_grounding": 0.0}
    assert 0 < scores["position"] < 1


def test_t2i_category_mix_is_uniform_by_default_and_configurable():
    tags = collections.Counter(ShapesWorld(seed=0).t2i_sample(i)["metadata"]["tag"] for i in range(1200))
    assert set(tags) == set(CATEGORIES) and all(120 <= n <= 280 for n in tags.values())
    w = ShapesWorld(seed=0, t2i_weights={"counting": 1.0, "position": 0.0})
    assert {w.t2i_sample(i)["metadata"]["tag"] for i in range(50)} == {"counting"}
    heavy = ShapesWorld(seed=0, t2i_weights={c: 3.0 if c == "color_attr" else 1.0 for c in CATEGORIES})
    tags = collections.Counter(heavy.t2i_sample(i)["metadata"]["tag"] for i in range(1600))
    assert 500 <= tags["color_attr"] <= 700 and all(150 <= tags[c] <= 250 for c in CATEGORIES if c != "color_attr")
    for bad, match in (({"colour_attr": 1.0}, r"names \['colour_attr'\]"), ({"counting": -1.0}, ">= 0"),
                       ({"counting": 0.0}, "positive sum"), ({"counting": float("nan")}, ">= 0")):
        with pytest.raises(ValueError, match=match):
            ShapesWorld(t2i_weights=bad)
    with pytest.raises(ValueError, match=r"not categories of the heldout split: use \['colors', 'color_attr'\]"):
        ShapesWorld(split="heldout", t2i_weights={"counting": 1.0})


def test_class_samples_have_stable_ids():
    w = ShapesWorld(seed=0)
    for i in range(50):
        s = w.class_sample(i)
        assert CLASS_NAMES[s["label"]] == s["class_name"] and s["image"].size == (64, 64)
    assert len(CLASS_NAMES) == 18


# A hand-built scene with known answers: red circle (left), green triangle (top middle), blue square (right).
KNOWN = Scene([
    Obj("circle", "red", "large", 0.2, 0.6),
    Obj("triangle", "green", "small", 0.5, 0.2),
    Obj("square", "blue", "small", 0.8, 0.6),
])


def test_qa_answers_are_correct_on_a_known_scene():
    colour_of = {o.shape: o.color for o in KNOWN.objects}
    shape_of = {o.color: o.shape for o in KNOWN.objects}
    for seed in range(40):
        rng = random.Random(seed)
        q, a, t = make_qa(KNOWN, rng, "color")
        assert t == "color" and a == colour_of[q.split()[-1].rstrip("?")]
        q, a, _ = make_qa(KNOWN, rng, "shape")
        assert a == shape_of[q.split()[4]]
        q, a, _ = make_qa(KNOWN, rng, "count")
        expected = {"how many objects are there?": "3", "how many circles are there?": "1",
                    "how many red objects are there?": "1", "how many yellow objects are there?": "0"}
        if q in expected:
            assert a == expected[q]
        assert a in {"0", "1", "3"}
        q, a, _ = make_qa(KNOWN, rng, "exists")
        present = any(f" {o.color} {o.shape}?" in q for o in KNOWN.objects)
        assert a == ("yes" if present else "no")
    assert make_qa(KNOWN, random.Random(0), "describe")[1] == "a red circle, a green triangle and a blue square"
    answers = {make_qa(KNOWN, random.Random(s), "position")[:2] for s in range(60)}
    truth = {
        ("is the red circle left or right of the blue square?", "left"),
        ("is the blue square left or right of the red circle?", "right"),
        ("is the green triangle above or below the red circle?", "above"),
        ("is the red circle above or below the green triangle?", "below"),
        ("is the red circle left or right of the green triangle?", "left"),
        ("is the green triangle left or right of the blue square?", "left"),
    }
    assert truth & answers and answers <= truth | {
        ("is the green triangle left or right of the red circle?", "right"),
        ("is the blue square left or right of the green triangle?", "right"),
        ("is the green triangle above or below the blue square?", "above"),
        ("is the blue square above or below the green triangle?", "below"),
    }


def test_qa_avoids_ambiguous_questions():
    twins = Scene([Obj("circle", "red", "small", 0.2, 0.2), Obj("circle", "blue", "small", 0.8, 0.8)])
    for s in range(30):
        q, a, t = make_qa(twins, random.Random(s))
        assert q != "what color is the circle?"
    same_colour = Scene([Obj("circle", "red", "small", 0.2, 0.2), Obj("square", "red", "small", 0.8, 0.8)])
    assert all(make_qa(same_colour, random.Random(s))[2] != "shape" for s in range(30))


def test_qa_samples_cover_all_types_with_short_answers():
    w = ShapesWorld(seed=0)
    samples = [w.qa_sample(i) for i in range(600)]
    assert {s["qtype"] for s in samples} == set(QA_TYPES)
    for s in samples:
        assert s["question"].endswith(("?", "."))
        if s["qtype"] != "describe":
            assert len(s["answer"].split()) == 1


def test_sentences_are_true():
    w = ShapesWorld(seed=0)
    for i in range(500):
        text = w.text_sample(i)["text"]
        assert text.endswith(".")
        words = split_words(text)
        if "plus" in words:
            a, _, b, _, c, _ = words
            assert NUMBER_WORDS.index(a) + NUMBER_WORDS.index(b) == NUMBER_WORDS.index(c)
        if words[1] in ("triangles", "squares") and "corners" in words:
            per = {"triangles": 3, "squares": 4}[words[1]]
            assert NUMBER_WORDS.index(words[0]) * per == NUMBER_WORDS.index(words[3])


def test_vocabulary_covers_every_generated_word():
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab) and {".", ",", "?"} <= vocab
    texts = []
    for split in ("train", "heldout"):
        w = ShapesWorld(seed=5, split=split)
        texts += [w.t2i_sample(i)["prompt"] for i in range(1000)]
        texts += [w.class_sample(i)["class_name"] for i in range(100)]
    w = ShapesWorld(seed=5)
    for i in range(2000):
        qa = w.qa_sample(i)
        texts += [qa["question"], qa["answer"], w.text_sample(i)["text"]]
    used = {tok for t in texts for tok in split_words(t)}
    assert used <= vocab, used - vocab
    assert vocab - used <= set(NUMBER_WORDS), vocab - used  # no padding beyond spare number words
    tokens = ["is", "there", "a", "red", "circle", "?", "yes", ",", "two", "."]
    assert split_words("Is there a red circle? Yes, two.") == tokens


def test_qa_conversations_ask_distinct_true_questions_about_one_scene():
    from lit_janus.data import ShapesSource

    w = ShapesWorld(seed=0)
    for i in range(50):
        chat = w.qa_conversation(i, turns=4)["conversations"]
        first = w.qa_sample(i)
        assert chat[:2] == [{"role": "user", "content": first["question"]},
                            {"role": "assistant", "content": first["answer"]}]
        questions = [m["content"] for m in chat[::2]]
        assert 2 <= len(questions) <= 4 and len(set(questions)) == len(questions)
        assert [m["role"] for m in chat] == ["user", "assistant"] * len(questions)
    assert np.array_equal(np.asarray(w.qa_conversation(3, 4)["image"]), np.asarray(w.qa_sample(3)["image"]))
    assert "conversations" in ShapesSource("qa", turns=3)[0] and "question" in ShapesSource("qa")[0]
    with pytest.raises(ValueError, match="turns must be 1-32"):
        ShapesSource("qa", turns=0)
    # beyond one question per type: more distinct questions, of every type, the first six turns unchanged
    types = collections.Counter()
    for i in range(50):
        chat, few = w.qa_conversation(i, turns=12)["conversations"], w.qa_conversation(i, turns=6)["conversations"]
        questions = [m["content"] for m in chat[::2]]
        assert chat[:len(few)] == few and len(set(questions)) == len(questions) <= 12
        types.update(q.split()[0] + " " + q.split()[1] for q in questions[len(few) // 2:])
    assert sum(len(w.qa_conversation(i, turns=12)["conversations"]) // 2 for i in range(50)) >= 50 * 9
    assert {"is the", "how many", "is there"} <= set(types)
