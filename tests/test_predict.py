"""`main.py predict` end to end on a tiny checkpoint: writers, GenEval layout, bad items, resume,
and the training-time SampleImages callback."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lit_janus import generate as G
from lit_janus.predict import JanusGenerator, image_grid, read_items


pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[1]
# GenEval's real prompt metadata, from the shared folder beside the checkout (not shipped in the repo)
GENEVAL = Path(__file__).resolve().parents[2] / "shared/data/geneval_evaluation_metadata.jsonl"
GENEVAL_LINES = [  # lines 1, 343 and 180 of GenEval's prompts/evaluation_metadata.jsonl
    '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
    '{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}',
    '{"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}], '
    '"prompt": "a photo of two clocks"}',
]


def run_predict(tmp_path, config: str, model: dict, data: dict, writer: dict, extra: tuple = ()):
    """Run the shipped predict config with some init_args replaced (the file itself is what users run)."""
    from lit_janus.cli import main

    c = yaml.safe_load((ROOT / "configs" / "predict" / config).read_text())
    c["model"]["init_args"].update(model)
    c["data"]["init_args"].update(data)
    c["trainer"]["callbacks"][0]["init_args"].update(writer)
    c["trainer"]["default_root_dir"] = str(tmp_path / "root")
    c["trainer"]["enable_progress_bar"] = False
    path = tmp_path / f"run_{config}"
    path.write_text(yaml.safe_dump(c))
    main(["predict", "--config", str(path), *extra])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def png(path):
    return np.asarray(Image.open(path))


# ---- inputs -------------------------------------------------------------------------------------
def test_read_items_understands_each_format(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  two squares  \n")
    fmt, items = read_items(tmp_path / "p.txt")
    assert fmt == "prompts" and [i["prompt"] for i in items] == ["a red circle", "", "two squares"]
    assert [i["index"] for i in items] == [0, 1, 2]  # line numbers name the outputs

    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "seed": 4, "n": 2, "metadata": {"k": 1}}\n\n{oops\n')
    fmt, items = read_items(tmp_path / "p.jsonl")
    assert fmt == "prompts" and items[0] == {"index": 0, "prompt": "a", "seed": 4, "n": 2, "metadata": {"k": 1}}
    assert items[1]["index"] == 2 and "invalid JSON" in items[1]["error"]

    (tmp_path / "g.jsonl").write_text("\n".join(GENEVAL_LINES) + "\n")
    fmt, items = read_items(tmp_path / "g.jsonl")
    assert fmt == "geneval" and items[2]["prompt"] == "a photo of two clocks"
    assert items[2]["metadata"] == json.loads(GENEVAL_LINES[2])

    (tmp_path / "q.jsonl").write_text('{"image": "im/a.png", "question": "what?", "id": "x"}\n')
    fmt, items = read_items(tmp_path / "q.jsonl")
    assert fmt == "vqa" and items[0]["image"] == str(tmp_path / "im" / "a.png") and items[0]["id"] == "x"


def test_read_items_reports_unusable_lines_as_bad_items(tmp_path):
    rows = ['{"prompt": null}', '{"text": "a"}', '{"prompt": "a", "seed": "abc"}', '{"prompt": "a", "n": 0}',
            '{"prompt": "a", "seed": true}', json.dumps({"prompt": "two\u2028lines", "seed": 3}), '{"prompt": "b"}']
    # a byte-order mark (Windows editors) and U+2028 inside a JSON string must not shift the line numbers
    (tmp_path / "p.jsonl").write_text("\ufeff" + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    fmt, items = read_items(tmp_path / "p.jsonl")
    assert fmt == "prompts" and [i["index"] for i in items] == list(range(7))
    errors = [i.get("error", "") for i in items]
    assert "line 1: 'prompt' is null" in errors[0] and "line 2: no 'prompt' field" in errors[1]
    assert "'seed' must be an integer, got str" in errors[2] and "'n' must be an integer >= 1, got 0" in errors[3]
    assert "'seed' must be an integer, got bool" in errors[4]
    assert items[5] == {"index": 5, "prompt": "two\u2028lines", "seed": 3} and items[6]["prompt"] == "b"

    (tmp_path / "q.jsonl").write_text('{"image": 3, "question": "q"}\n{"image": ["a.png", "b.png"], "question": "q"}\n'
                                      '{"image": "", "question": "q"}\n')
    _, items = read_items(tmp_path / "q.jsonl")
    assert "'image' must be a path or a list of paths, got int" in items[0]["error"]
    assert items[1]["image"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert "'image' is empty" in items[2]["error"]  # not the file's folder
    (tmp_path / "latin1.txt").write_bytes("a red circle\nun c\xf4ne\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: line 2 is not UTF-8"):
        read_items(tmp_path / "latin1.txt")
    with pytest.raises(IsADirectoryError, match="give the prompts"):
        read_items(tmp_path)

    # a prompts file without a .txt suffix is plain text when its first line is not a JSON object
    (tmp_path / "prompts").write_text("\ufeffa red circle\n{not json\n")
    assert read_items(tmp_path / "prompts") == ("prompts", [{"index": 0, "prompt": "a red circle"},
                                                           {"index": 1, "prompt": "{not json"}])
    with pytest.raises(ValueError, match="format 'vqa' needs a JSONL file"):
        read_items(tmp_path / "prompts", "vqa")

    from lit_janus.predict import PromptData

    from lit_janus.predict.writers import ImageWriter

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="a_file is a file: name a directory"):
        ImageWriter(str(tmp_path / "a_file"))
    for bad in ({"limit": 0}, {"limit": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            PromptData(str(tmp_path / "prompts"), **bad)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no prompts"):
        PromptData(str(tmp_path / "empty.txt")).setup("predict")


@pytest.mark.skipif(not GENEVAL.is_file(), reason="GenEval metadata not present")
def test_geneval_metadata_file_is_detected():
    fmt, items = read_items(GENEVAL)
    assert fmt == "geneval" and len(items) == 553 and all(i["prompt"] for i in items)


def test_image_grid_places_every_image():
    ims = torch.stack([torch.full((4, 4, 3), v, dtype=torch.uint8) for v in (10, 20, 30)])
    g = image_grid(ims, pad=1)
    assert g.shape == (9, 9, 3)  # 2x2 cells of 4 px with 1 px gaps
    assert g[0, 0, 0] == 10 and g[0, 5, 0] == 20 and g[5, 0, 0] == 30 and g[5, 5, 0] == 255


# ---- text-to-image --------------------------------------------------------------------------------
def test_t2i_writes_images_metadata_errors_and_resumes(tmp_path, tiny_hf_dir):
    prompts = ["a photo of a red circle", "", "two blue squares", "red " * 5000, "green"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    args = dict(model={"checkpoint": str(tiny_hf_dir), "images_per_prompt": 2, "seed": 10},
                data={"path": str(tmp_path / "prompts.txt"), "batch_size": 2},
                writer={"output_dir": str(out)})
    # a run stopped after its first batch ...
    # 0.4 of the 3 batches = 1 batch. Not "1": jsonargparse reads it by Trainer's Union[int, float]
    # annotation, whose member order depends on which package first built that Union (typing's cache),
    # and as 1.0 it means 100%
    run_predict(tmp_path, "t2i.yaml", **args, extra=("--trainer.limit_predict_batches", "0.4"))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000_00.png", "00000_01.png"]
    first = (out / "images" / "00000_00.png").stat().st_mtime_ns
    with open(out / "metadata.jsonl", "a") as f:  # ... and killed while appending: one of item 2's two lines
        f.write(json.dumps({"index": 2, "image_index": 0, "n_images": 2, "prompt": "two blue squares"}) + "\n")
        f.write('{"index": 2, "image_ind')  # made it, the next one did not
    # ... resumes: finished items are skipped, the rest written
    run_predict(tmp_path, "t2i.yaml", **args)
    assert (out / "images" / "00000_00.png").stat().st_mtime_ns == first

    meta = read_jsonl(out / "metadata.jsonl")
    assert [(m["index"], m["image_index"]) for m in meta] == [(0, 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    m = meta[2]
    assert m["prompt"] == "two blue squares" and m["seed"] == 12 and m["cfg_weight"] == 5.0
    assert m["temperature"] == 1.0 and m["grid"] == "grids/00002.png"
    for m in meta:
        assert png(out / m["file"]).shape == (32, 32, 3) and (out / m["grid"]).is_file()
    assert not list(out.rglob("*.tmp"))

    errors = {e["index"]: e["error"] for e in read_jsonl(out / "errors.jsonl")}
    assert set(errors) == {1, 3}
    assert "empty prompt" in errors[1] and "PromptTooLongError" in errors[3] and "shorten" in errors[3]

    # a rerun into the same folder only resumes the same run: another CFG weight, checkpoint or input stops it
    mtimes = sorted(f.stat().st_mtime_ns for f in out.rglob("*.png"))
    with pytest.raises(ValueError, match=r"another predict run .*cfg_weight: 5.0 -> 3.0"):
        run_predict(tmp_path, "t2i.yaml", **{**args, "model": {**args["model"], "cfg_weight": 3.0}})
    (tmp_path / "other.txt").write_text("a blue square\n" + "\n".join(prompts[1:]) + "\n")
    with pytest.raises(ValueError, match="item 0: written for .*a photo of a red circle.*now .*a blue square"):
        run_predict(tmp_path, "t2i.yaml", **{**args, "data": {**args["data"], "path": str(tmp_path / "other.txt")}})
    assert sorted(f.stat().st_mtime_ns for f in out.rglob("*.png")) == mtimes  # nothing rewritten
    assert json.loads((out / "run.json").read_text())["cfg_weight"] == 5.0

    # the files are what the library gives for the same seeds (seed 10 + line index)
    from lit_janus.checkpoint import load_any

    model, processor = load_any(tiny_hf_dir)
    gen = G.generate(model, processor, ["two blue squares"], images_per_prompt=2, seeds=[12])
    assert np.array_equal(png(out / "images" / "00002_01.png"), gen.images[1].numpy())


def test_t2i_on_two_devices_writes_what_one_device_writes(tmp_path, tiny_hf_dir):
    """`python main.py predict ... --trainer.devices 2`: the ranks share the prompts (5 over 2 ranks: the
    sampler repeats one to even them out) and write each image once, the same files one device writes."""
    import subprocess
    import sys

    prompts = ["a photo of a red circle", "two blue squares", "green", "three", "no"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args = dict(model={"checkpoint": str(tiny_hf_dir), "images_per_prompt": 2, "seed": 3},
                data={"path": str(tmp_path / "prompts.txt"), "batch_size": 1}, writer={"output_dir": str(tmp_path / "one")})
    run_predict(tmp_path, "t2i.yaml", **args)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "predict", "--config", str(ROOT / "configs/predict/t2i.yaml"),
         "--model.init_args.checkpoint", str(tiny_hf_dir), "--model.init_args.images_per_prompt", "2",
         "--model.init_args.seed", "3", "--data.init_args.path", str(tmp_path / "prompts.txt"),
         "--data.init_args.batch_size", "1", "--trainer.callbacks.init_args.output_dir", str(tmp_path / "two"),
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_jsonl(tmp_path / "one/metadata.jsonl"), read_jsonl(tmp_path / "two/metadata.jsonl")
    assert len(two) == 10 and sorted(map(json.dumps, two)) == sorted(map(json.dumps, one))
    for m in one:
        assert np.array_equal(png(tmp_path / "one" / m["file"]), png(tmp_path / "two" / m["file"])), m["file"]


def test_a_run_that_failed_before_any_output_does_not_block_its_rerun(tmp_path, tiny_hf_dir):
    """The usual first mistake, a wrong checkpoint path, leaves run.json but no output: the corrected
    rerun into the same folder starts afresh instead of being refused as 'another predict run'."""
    from lit_janus.checkpoint import CheckpointError

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    out = tmp_path / "out"
    args = dict(data={"path": str(tmp_path / "prompts.txt")}, writer={"output_dir": str(out)})
    with pytest.raises(CheckpointError):
        run_predict(tmp_path, "t2i.yaml", model={"checkpoint": str(tmp_path / "missing")}, **args)
    run_predict(tmp_path, "t2i.yaml", model={"checkpoint": str(tiny_hf_dir), "images_per_prompt": 1}, **args)
    assert [m["index"] for m in read_jsonl(out / "metadata.jsonl")] == [0]
    assert json.loads((out / "run.json").read_text())["checkpoint"] == str(tiny_hf_dir)


def test_a_run_in_which_every_item_failed_does_not_exit_cleanly(tmp_path, tiny_hf_dir):
    """An image-question file given to t2i.yaml: every item is an error, and the run says so."""
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "a.png", "question": "what?"}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no item could be produced: all 1 failed"):
        run_predict(tmp_path, "t2i.yaml", model={"checkpoint": str(tiny_hf_dir)},
                    data={"path": str(tmp_path / "q.jsonl")}, writer={"output_dir": str(out)})
    assert "no 'prompt'" in read_jsonl(out / "errors.jsonl")[0]["error"]


def test_geneval_layout_is_what_the_scorer_reads(tmp_path, tiny_hf_dir):
    lines = GENEVAL_LINES
    (tmp_path / "meta.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "geneval"
    run_predict(tmp_path, "geneval.yaml", model={"checkpoint": str(tiny_hf_dir), "images_per_prompt": 2},
                data={"path": str(tmp_path / "meta.jsonl"), "batch_size": 2}, writer={"output_dir": str(out)})
    folders = sorted(d.name for d in out.iterdir() if d.is_dir() and d.name.isdigit())
    assert folders == ["00000", "00001", "00002"]
    for i, name in enumerate(folders):
        with open(out / name / "metadata.jsonl") as fp:  # GenEval's evaluate_images.py uses json.load
            assert json.load(fp) == json.loads(lines[i])
        samples = sorted(p.name for p in (out / name / "samples").iterdir())
        assert samples == ["0000.png", "0001.png"] and all(re.match(r"\d+\.png", s) for s in samples)
        assert (out / name / "grid.png").is_file()


# ---- understanding --------------------------------------------------------------------------------
def test_understand_answers_and_records_bad_images(tmp_path, tiny_hf_dir):
    (tmp_path / "im").mkdir()
    Image.new("RGB", (50, 30), (255, 0, 0)).save(tmp_path / "im" / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "im" / "blue.png")
    (tmp_path / "im" / "notes.png").write_text("not an image")
    rows = [{"image": "im/red.png", "question": "what colour is the square?", "id": "a", "metadata": {"answer": "red"}},
            {"image": "im/missing.png", "question": "yes?"},
            {"image": "im/blue.png", "question": "how many circles are there?"},
            {"image": "im/notes.png", "question": "no?"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers"
    run_predict(tmp_path, "understand.yaml", model={"checkpoint": str(tiny_hf_dir), "max_new_tokens": 5},
                data={"path": str(tmp_path / "q.jsonl"), "batch_size": 4}, writer={"output_dir": str(out)})
    answers = read_jsonl(out / "answers.jsonl")
    assert [a["index"] for a in answers] == [0, 2] and answers[0]["id"] == "a"
    assert answers[0]["metadata"] == {"answer": "red"} and "metadata" not in answers[1]
    assert answers[1]["question"] == "how many circles are there?" and isinstance(answers[1]["answer"], str)
    errors = {e["index"]: e["error"] for e in read_jsonl(out / "errors.jsonl")}
    assert "missing.png" in errors[1] and "FileNotFoundError" in errors[1]
    assert "notes.png" in errors[3]

    from lit_janus.checkpoint import load_any

    model, processor = load_any(tiny_hf_dir)
    ref = G.answer(model, processor, [str(tmp_path / "im" / "blue.png")], ["how many circles are there?"],
                   max_new_tokens=5)
    assert answers[1]["answer"] == ref[0]


def test_understand_leaves_room_for_the_answer(tiny_hf_dir, tmp_path):
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    module = JanusGenerator(str(tiny_hf_dir), task="understand", max_new_tokens=8)
    module.configure_model()
    long_q = "what colour? " + "why " * 10  # 10+ tokens longer than the other questions
    # a context the question fits alone, but not with 8 answer tokens
    module.processor.max_length = len(module.processor.understanding_ids(long_q, 1)) + 4
    out = module.predict_step([{"index": 0, "image": str(tmp_path / "blue.png"), "question": long_q},
                               {"index": 1, "image": str(tmp_path / "blue.png"), "question": "what colour?", "seed": "x"},
                               {"index": 2, "image": str(tmp_path / "blue.png"), "question": "what colour?"}])
    assert "PromptTooLongError" in out[0]["error"] and "max_new_tokens 8" in out[0]["error"]
    assert "seed must be an integer" in out[1]["error"] and isinstance(out[2]["answer"], str)


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"top_k": -1}, {"temperature": -1.0}, {"max_new_tokens": 0},
                                 {"images_per_prompt": 0}])
def test_generator_rejects_bad_sampling_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        JanusGenerator("unused", **bad)


def test_fail_fast_stops_at_the_first_bad_item(tiny_hf_dir):
    module = JanusGenerator(str(tiny_hf_dir), images_per_prompt=1, fail_fast=True)
    module.configure_model()
    with pytest.raises(ValueError, match="item 1: ValueError: empty prompt"):
        module.predict_step([{"index": 0, "prompt": "green"}, {"index": 1, "prompt": ""}])
    # in file order: an empty prompt before an unparseable line is the one reported (it was the line)
    with pytest.raises(ValueError, match="item 0: ValueError: empty prompt"):
        module.predict_step([{"index": 0, "prompt": ""}, {"index": 1, "error": "p.jsonl line 2: invalid JSON"}])
    with pytest.raises(ValueError, match="item 1: p.jsonl line 2: invalid JSON"):
        module.predict_step([{"index": 0, "prompt": "green"}, {"index": 1, "error": "p.jsonl line 2: invalid JSON"}])
    module.hparams.fail_fast = False
    out = module.predict_step([{"index": 0, "prompt": "green"}, {"index": 1, "prompt": ""}, {"index": 2, "done": True}])
    assert out[0]["images"].shape[0] == 1 and "empty prompt" in out[1]["error"] and out[2]["skipped"]


# ---- training-time samples --------------------------------------------------------------------------
def test_sample_images_callback_logs_to_tensorboard(tmp_path, tiny_model, tiny_processor):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_janus.callbacks import SampleImages

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.processor = tiny_model, tiny_processor

        def training_step(self, batch, batch_idx):
            return (self.model.gen_head.vision_head.weight * 0).sum() + batch.sum() * 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.gen_head.parameters(), lr=0.0)

    cb = SampleImages(["a photo of a red circle", "green"], every_n_steps=2, images_per_prompt=2)
    trainer = L.Trainer(max_steps=4, logger=TensorBoardLogger(tmp_path, name="tb"), callbacks=[cb],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=1))
    acc = EventAccumulator(str(Path(trainer.logger.log_dir)), size_guidance={"images": 0}).Reload()
    assert sorted(acc.Tags()["images"]) == ["samples/00", "samples/01"]
    assert [e.step for e in acc.Images("samples/00")] == [2, 4]  # a grid of the prompt's images per step
    first = acc.Images("samples/01")[0]
    assert (first.height, first.width) == (32, 64)

    module = Tiny().train()
    module.model.vision.eval()  # a frozen part stays in eval mode
    images = cb.sample(trainer, module)
    assert [tuple(i.shape) for i in images] == [(2, 32, 32, 3)] * 2
    assert module.model.training and module.model.llm.training and not module.model.vision.training


def test_step_times_splits_data_wait_from_the_step():
    import time

    import lightning as L

    from lit_janus.callbacks import StepTimes

    class SlowData(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            time.sleep(0.03)  # the loader's share of each step
            return torch.zeros(1)

    class SlowStep(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            time.sleep(0.06)  # the step's share
            return (self.w * batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    from lightning.pytorch.loggers import Logger

    class Recorder(Logger):
        name, version = "recorder", 0

        def __init__(self):
            super().__init__()
            self.logged = []

        def log_hyperparams(self, params):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    cb = StepTimes(skip=2, log_every_n_steps=4)
    recorder = Recorder()
    trainer = L.Trainer(max_steps=10, logger=recorder, callbacks=[cb], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(SlowStep(), torch.utils.data.DataLoader(SlowData(), batch_size=1))
    t = cb.summary()
    assert t["steps"] == 7 and "gpu_backlog_ms" not in t  # steps 4-10 have a previous one; no CUDA here
    windows = [(step, m) for step, m in recorder.logged if any(k.startswith("time/") for k in m)]
    # logged after steps 4 and 8, each over the steps since the last log (step 3 is the first measured)
    assert [step for step, _ in windows] == [4, 8]
    assert set(windows[0][1]) == {"time/period_ms", "time/data_ms", "time/step_ms"}
    assert all(25 <= m["time/data_ms"] < 90 for _, m in windows)
    # the sleeps are lower bounds; the upper ones leave room for a busy machine
    assert 29 <= t["data_ms"] < 90 and 59 <= t["step_ms"] < 150 and t["step_ms"] > t["data_ms"]
    assert t["period_ms"] == pytest.approx(t["data_ms"] + t["step_ms"], abs=20)

    # with gradient accumulation it logs at optimizer steps, once each (it logged at every batch)
    cb, recorder = StepTimes(skip=0, log_every_n_steps=2), Recorder()
    L.Trainer(max_steps=4, accumulate_grad_batches=2, logger=recorder, callbacks=[cb], enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
        SlowStep(), torch.utils.data.DataLoader(SlowData(), batch_size=1))
    assert [step for step, m in recorder.logged if "time/step_ms" in m] == [2, 4]
    assert cb.summary()["steps"] == 7  # batches: 8, the first without a previous one
