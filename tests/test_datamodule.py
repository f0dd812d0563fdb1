"""JanusDataModule under a real Trainer: exact per-step task mix, validation, resume, 2-process DDP,
config parsing, and the code-extraction predict config."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_data import manifests, write_image, write_jsonl

from lit_janus.batch import IGNORE, TASKS
from lit_janus.data import JanusDataModule, JsonlSource, StreamingSource, TaskRatio, TaskStream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(str(d))
    return str(d)


def sources(paths):
    return {t: [JsonlSource(str(p))] for t, p in paths.items()}


def datamodule(tok_dir, tmp_path, ratio=TaskRatio(2, 3, 5), global_batch_size=10, n=40, val=True, **kwargs):
    train = sources(manifests(tmp_path / "train", n=n))
    held = sources(manifests(tmp_path / "val", n=12, tag="val ")) if val else {}
    kwargs = {"image_size": 32, "num_image_tokens": 16, "max_length": 512, "num_workers": 0, **kwargs}
    return JanusDataModule(tokenizer=tok_dir, ratio=ratio, global_batch_size=global_batch_size,
                           **{t: train[t] for t in TASKS}, **{f"val_{t}": held.get(t) for t in TASKS}, **kwargs)


def fingerprint(batch, tokenizer):
    """Per-task sample counts and the (sorted) documents of a merged batch, by their text."""
    docs = []
    for r in range(batch["input_ids"].shape[0]):
        n = int((batch["task_ids"][r] > 0).sum())
        pos, ids, codes = batch["position_ids"][r, :n], batch["input_ids"][r, :n], batch["gen_mask"][r, :n]
        starts = (pos == 0).nonzero().flatten().tolist() + [n]
        for a, b in zip(starts, starts[1:]):  # one document per restart of the position ids
            text_ids = ids[a:b][~codes[a:b]]  # without its image codes
            m = re.search(r"(val )?(question|doc|caption) \d+", tokenizer.decode(text_ids.tolist()))
            docs.append(m.group(0) if m else "unconditional")  # a CFG-dropped prompt names nothing
    return {"counts": [int(batch[f"samples_{t}"]) for t in TASKS],
            "skipped": [int(batch[f"skipped_{t}"]) for t in TASKS], "docs": sorted(docs)}


class Recorder(L.LightningModule):
    """Records what every step receives; trains one dummy weight."""

    def __init__(self, tokenizer):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.tokenizer, self.train_seen, self.val_seen = tokenizer, [], []

    def training_step(self, batch, batch_idx):
        self.train_seen.append(fingerprint(batch, self.tokenizer))
        return self.w * batch["input_ids"].float().mean()

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(fingerprint(batch, self.tokenizer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, **kwargs):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                     **kwargs)


def test_fit_mixes_the_exact_ratio_every_step_and_validates_on_held_out_data(tmp_path, tok_dir, tiny_tokenizer):
    dm = datamodule(tok_dir, tmp_path, ratio=TaskRatio(2, 3, 5), global_batch_size=20, val_batches=2,
                    pack_length=512)
    model = Recorder(tiny_tokenizer)
    trainer(tmp_path, max_steps=6, accumulate_grad_batches=2, val_check_interval=6, check_val_every_n_epoch=None,
            num_sanity_val_steps=0).fit(model, dm)
    assert dm.batch_sizes == {"und": [2, 2], "text": [3, 3], "t2i": [5, 5]}  # 20 = 2 micro-batches x (2 + 3 + 5)
    assert len(model.train_seen) == 12 and all(s["counts"] == [2, 3, 5] for s in model.train_seen)
    assert all(len(s["docs"]) == 10 for s in model.train_seen)
    text_docs = [d for s in model.train_seen for d in s["docs"] if d.startswith("doc")]
    assert len(text_docs) == len(set(text_docs)) == 36  # 12 x 3 of an epoch of 40: no repeats
    # validation every 6 micro-batches: twice, on the same held-out batches with the same mix
    assert len(model.val_seen) == 4 and all(s["counts"] == [2, 3, 5] for s in model.val_seen)
    assert model.val_seen[:2] == model.val_seen[2:]
    assert all(d.startswith("val ") for s in model.val_seen for d in s["docs"])
    # where the streams resume: micro-batches, and each task's samples drawn by all ranks
    assert dm.state_dict() == {"train_steps": 12, "samples": {"und": 24, "text": 36, "t2i": 60}}


def test_validate_without_validation_sources_says_so(tmp_path, tok_dir, tiny_tokenizer):
    """`main.py validate` with no val_* sources used to run nothing and exit 0."""
    dm = datamodule(tok_dir, tmp_path, val=False)
    with pytest.raises(ValueError, match="nothing to validate: set val_und / val_text / val_t2i"):
        trainer(tmp_path).validate(Recorder(tiny_tokenizer), dm)
    assert datamodule(tok_dir, tmp_path, val=False).val_dataloader() == []  # fit without validation: fine


def test_ratio_zero_switches_a_stream_off_and_stage_batch_errors_are_clear(tmp_path, tok_dir, tiny_tokenizer):
    dm = datamodule(tok_dir, tmp_path, ratio=TaskRatio(1, 0, 3), global_batch_size=8, val=False)
    model = Recorder(tiny_tokenizer)
    trainer(tmp_path, max_steps=2).fit(model, dm)
    assert all(s["counts"] == [2, 0, 6] for s in model.train_seen)
    with pytest.raises(ValueError, match="not whole samples"):
        datamodule(tok_dir, tmp_path, ratio=TaskRatio(2, 3, 5), global_batch_size=16).setup("fit")
    with pytest.raises(ValueError, match="no text sources"):
        JanusDataModule(tokenizer=tok_dir, ratio=TaskRatio(1, 1, 1), und=[JsonlSource("x.jsonl")],
                        t2i=[JsonlSource("x.jsonl")])


def test_resume_continues_with_the_same_batches(tmp_path, tok_dir, tiny_tokenizer):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def dm():  # 2:3:5 of 10 per optimizer step in 2 micro-batches of 5: und 1+1, text 2+1, t2i 2+3
        return datamodule(tok_dir, tmp_path, ratio=TaskRatio(2, 3, 5), global_batch_size=10, n=10, val=False,
                          cfg_dropout=0.5)

    straight = Recorder(tiny_tokenizer)
    trainer(tmp_path / "a", max_steps=6, accumulate_grad_batches=2).fit(straight, dm())
    first = Recorder(tiny_tokenizer)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1)
    L.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=2, logger=False, callbacks=[ckpt],
              enable_progress_bar=False, enable_model_summary=False).fit(first, dm())
    resumed = Recorder(tiny_tokenizer)
    trainer(tmp_path / "b", max_steps=6, accumulate_grad_batches=2).fit(
        resumed, dm(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    assert len(straight.train_seen) == 12 and len(resumed.train_seen) == 6
    assert [s["counts"] for s in straight.train_seen] == [[1, 2, 2], [1, 1, 3]] * 6
    assert first.train_seen == straight.train_seen[:6] and resumed.train_seen == straight.train_seen[6:]


def layout(rank, world_size, accumulate):
    """What JanusDataModule reads from its trainer, for a layout a CPU test cannot launch."""
    from types import SimpleNamespace

    return SimpleNamespace(global_rank=rank, world_size=world_size, num_nodes=1, accumulate_grad_batches=accumulate,
                           training=True)


def test_resume_with_other_devices_or_accumulation_continues_the_data_exactly(tmp_path, tok_dir, tiny_tokenizer):
    paths = manifests(tmp_path / "data", n=40)

    def steps(fake_trainer, n, state=None):
        """The documents of each of `n` micro-batches, and the datamodule's state after them."""
        dm = JanusDataModule(tokenizer=tok_dir, ratio=TaskRatio(2, 3, 5), global_batch_size=40, image_size=32,
                             num_image_tokens=16, max_length=512, num_workers=0, cfg_dropout=0.0,
                             **sources(paths))
        dm.trainer = fake_trainer
        dm.setup("fit")
        if state is not None:
            dm.load_state_dict(state)
        loaders = {t: iter(loader) for t, loader in dm.train_dataloader().iterables.items()}
        docs = [fingerprint(dm.on_before_batch_transfer({t: next(it) for t, it in loaders.items()}, 0),
                            tiny_tokenizer)["docs"] for _ in range(n)]
        return docs, dm.state_dict()

    # 2 devices x 1 micro-batch of 4/6/10: 3 optimizer steps, checkpoint, 3 more (the straight run)
    straight = [steps(layout(rank, 2, 1), 6)[0] for rank in range(2)]
    _, state = steps(layout(0, 2, 1), 3)
    assert state == {"train_steps": 3, "samples": {"und": 24, "text": 36, "t2i": 60}}
    assert steps(layout(0, 2, 1), 3, {"train_steps": 3})[0] == straight[0][3:]  # a checkpoint from before "samples"
    # the same 40 samples per optimizer step; on 2 devices x 4 micro-batches a task's count varies between
    # the micro-batches (text 2/2/1/1, t2i 2/2/3/3) and the ratio holds per step
    for world, accumulate in ((1, 2), (4, 1), (2, 4)):
        resumed = [steps(layout(rank, world, accumulate), 3 * accumulate, state)[0] for rank in range(world)]
        for k in range(3):  # each optimizer step draws the same documents as the straight run's
            expected = sorted(straight[0][3 + k] + straight[1][3 + k])
            got = sorted(d for rank in resumed for micro in rank[k * accumulate:(k + 1) * accumulate] for d in micro)
            assert got == expected, (world, accumulate, k)


def test_litdata_positions_survive_a_resume_and_warn_in_another_layout(tmp_path, tok_dir):

    dm = JanusDataModule(tokenizer=tok_dir, ratio=TaskRatio(0, 0, 1), global_batch_size=8, image_size=32,
                         num_image_tokens=16, max_length=512, num_workers=2, t2i=[StreamingSource(str(tmp_path))])
    # 5 steps of 4 samples on each of 2 ranks: steps 0, 2, 4 read worker 0's shard, steps 1, 3 worker 1's
    saved = {"train_steps": 5, "samples": {"t2i": 40},
             "shards": {"t2i": {"world_size": 2, "workers": 2, "read": [12, 8]}}}

    def offsets(world):
        dm.trainer = layout(0, world, 1)
        dm.setup("fit")
        dm.load_state_dict(saved)
        stream = dm.train_dataloader().iterables["t2i"].dataset
        return stream.start_step, stream.shard_offsets

    assert offsets(2) == (5, [12, 8])  # the saved layout: every shard continues where it stopped
    with pytest.warns(UserWarning, match="this epoch's order does not continue exactly"):
        assert offsets(1) == (5, [20, 20])  # 2 ranks read 40 records: 20 for each of this rank's 2 shards


def test_bad_records_are_counted_in_the_batch_or_stop_a_strict_run(tmp_path, tok_dir, tiny_tokenizer):
    paths = manifests(tmp_path / "train", n=6)
    with open(paths["und"], "a") as f:
        f.write(json.dumps({"image": "img/missing.png", "question": "q", "answer": "a"}) + "\n")
        f.write("{broken json\n")
    dm = datamodule(tok_dir, tmp_path / "x", ratio=TaskRatio(1, 0, 1), global_batch_size=2, val=False)
    dm.sources["und"] = [JsonlSource(str(paths["und"]))]
    model = Recorder(tiny_tokenizer)
    trainer(tmp_path, max_steps=16).fit(model, dm)  # 16 und samples: two epochs over 8 records
    assert sum(s["skipped"][0] for s in model.train_seen) >= 4
    assert all(s["counts"] == [1, 0, 1] for s in model.train_seen)  # the mix stays exact
    dm.strict = True
    with pytest.raises(Exception, match="bad und record"):
        trainer(tmp_path, max_steps=16).fit(Recorder(tiny_tokenizer), dm)


def test_shapes_tokenizer_alias_and_sources(tmp_path):
    from lit_janus.data import ShapesSource
    from lit_janus.shapes.tokenizer import shapes_tokenizer

    dm = JanusDataModule(tokenizer="shapes", ratio=TaskRatio(2, 3, 5), global_batch_size=10, image_size=64,
                         num_image_tokens=64, max_length=1024, pack_length=1024, num_workers=0,
                         und=[ShapesSource("qa", length=50)], text=[ShapesSource("text", length=50)],
                         t2i=[ShapesSource("t2i", length=50), ShapesSource("class", length=50)])
    model = Recorder(shapes_tokenizer())
    trainer(tmp_path, max_steps=2).fit(model, dm)
    assert dm.processor.tokenizer is shapes_tokenizer() and len(model.train_seen) == 2
    assert all(s["counts"] == [2, 3, 5] for s in model.train_seen)
    assert all(len(s["docs"]) == 10 for s in model.train_seen)  # packed into rows of 1024, kept apart


def test_config_parses_with_class_path_sources(tmp_path, tok_dir):
    from jsonargparse import ArgumentParser

    paths = manifests(tmp_path, n=4)
    parser = ArgumentParser()
    parser.add_class_arguments(JanusDataModule, "data")
    cfg = parser.parse_object({"data": {
        "tokenizer": tok_dir, "ratio": {"und": 2, "text": 3, "t2i": 5}, "global_batch_size": 10, "image_size": 32,
        "num_image_tokens": 16, "max_length": 512,
        "und": [{"class_path": "lit_janus.data.JsonlSource", "init_args": {"path": str(paths["und"])}}],
        "text": [{"class_path": "lit_janus.data.JsonlSource", "init_args": {"path": str(paths["text"])}}],
        "t2i": [{"class_path": "lit_janus.data.ShapesSource", "init_args": {"kind": "class", "length": 8}},
                {"class_path": "lit_janus.data.StreamingSource", "init_args": {"input_dir": "s3://bucket/t2i"}}],
    }})
    cfg = parser.parse_args(["--data.ratio.text", "0"], namespace=cfg)  # a dotted override keeps the rest
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, JanusDataModule) and dm.ratio == TaskRatio(2, 0, 5) and dm.active == ["und", "t2i"]
    assert type(dm.sources["t2i"][1]).__name__ == "StreamingSource"
    assert "0 switches a" in parser.format_help()  # init docstrings become --help


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import lightning as L, torch
    sys.path.insert(0, {tests!r})
    from test_datamodule import Recorder
    from lit_janus.data import JanusDataModule, JsonlSource, TaskRatio
    from lit_janus.checkpoint import load_tokenizer

    paths, tok_dir, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    dm = JanusDataModule(tokenizer=tok_dir, ratio=TaskRatio(2, 3, 5), global_batch_size=20, image_size=32,
                         num_image_tokens=16, max_length=512, num_workers=0, cfg_dropout=0.0,
                         **{{t: [JsonlSource(p)] for t, p in paths.items()}})
    model = Recorder(load_tokenizer(tok_dir))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    with open(f"{{out}}/rank{{trainer.global_rank}}.json", "w") as f:
        json.dump({{"sizes": dm.batch_sizes, "seen": model.train_seen}}, f)
    # Lightning leaves the gloo group up; left to interpreter exit, its threads can abort the process
    # ("terminate called without an active exception", seen once after a finished fit)
    torch.distributed.destroy_process_group()
""")


def test_two_process_ddp_gives_every_rank_the_same_mix_and_disjoint_samples(tmp_path, tok_dir):
    paths = {t: str(p) for t, p in manifests(tmp_path / "data", n=40).items()}
    script = tmp_path / "ddp_data.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script), json.dumps(paths), tok_dir, str(tmp_path)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    for rank in ranks:  # 20 = 2 ranks x (2 + 3 + 5)
        assert rank["sizes"] == {"und": [2], "text": [3], "t2i": [5]}
        assert len(rank["seen"]) == 4 and all(s["counts"] == [2, 3, 5] for s in rank["seen"])
    docs = [{d for s in rank["seen"] for d in s["docs"]} for rank in ranks]
    assert len(docs[0]) == len(docs[1]) == 40 and not docs[0] & docs[1]  # 4 steps x 10, disjoint across ranks


def test_extract_codes_predict_config(tmp_path, tiny_hf_dir, tiny_model, tiny_processor, monkeypatch):
    """Paths as a user types them (relative to the working directory); the image size comes from the
    checkpoint; the written manifest trains, and `optimize` stores it (codes inline, no image bytes)."""
    from lit_janus.cli import main
    from lit_janus.data.optimize import optimize_source
    from lit_janus.vq import vq_encode

    monkeypatch.chdir(tmp_path)
    for i in range(5):
        write_image(tmp_path / "data" / "img" / f"{i}.png", value=40 * i, size=(48, 36))
    records = [{"image": f"img/{i}.png", "caption": f"caption {i}"} for i in range(5)]
    records.insert(2, {"image": "img/missing.png", "caption": "gone"})
    write_jsonl(tmp_path / "data" / "t2i.jsonl", records)

    def extract(out, *extra):
        main(["predict", "--config", str(ROOT / "configs/predict/extract_codes.yaml"),
              "--model.init_args.checkpoint", str(tiny_hf_dir), "--data.init_args.source.init_args.path",
              "data/t2i.jsonl", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", "run", "--trainer.callbacks.init_args.output_dir", out, *extra])

    with pytest.raises(ValueError, match="image_size is 64 but the checkpoint's VQ takes 32 px"):
        extract("data/wrong", "--data.init_args.image_size", "64")
    assert not (tmp_path / "data" / "wrong" / "codes.npy").exists()  # nothing half-written

    extract("data/codes")
    out = tmp_path / "data" / "codes"
    codes = np.load(out / "codes.npy")
    assert codes.shape == (6, 16) and (codes[2] == -1).all() and (codes[[0, 1, 3, 4, 5]] >= 0).all()
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in lines] == [f"caption {i}" for i in range(5)]
    src = JsonlSource(str(out / "manifest.jsonl"))
    assert [Path(src[i]["image"]).resolve() for i in range(5)] == [
        (tmp_path / "data" / "img" / f"{i}.png").resolve() for i in range(5)]  # relative to the manifest's folder
    stream = TaskStream("t2i", [src], tiny_processor, 5, shuffle=False)
    for s, i in zip(stream.batch_at(0).samples, range(5)):
        pixels = tiny_processor.generation_pixels(str(tmp_path / "data" / "img" / f"{i}.png"))
        expected = vq_encode(tiny_model.vq, pixels[None])[0]
        assert s.gen_pixels is None and torch.equal(s.gen_labels[s.gen_labels != IGNORE], expected)

    # a killed extraction resumes: rows already filled are kept, and their images never read again
    extract("data/part", "--trainer.limit_predict_batches", "0.4")  # 1 of 3 batches: records 0, 1
    part = np.load(tmp_path / "data" / "part" / "codes.npy")
    assert (part[:2] >= 0).all() and (part[2:] == -1).all()
    moved = tmp_path / "moved"
    moved.mkdir()
    for i in (0, 1):  # were they read again, they would now be unreadable (-1)
        (tmp_path / "data" / "img" / f"{i}.png").rename(moved / f"{i}.png")
    extract("data/part")
    assert np.array_equal(np.load(tmp_path / "data" / "part" / "codes.npy"), codes)
    assert len((tmp_path / "data" / "part" / "manifest.jsonl").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="holds the codes of another extraction .*checkpoint"):
        main(["predict", "--config", str(ROOT / "configs/predict/extract_codes.yaml"),
              "--model.init_args.checkpoint", str(shutil.copytree(tiny_hf_dir, tmp_path / "other")),
              "--data.init_args.source.init_args.path", "data/t2i.jsonl", "--trainer.accelerator", "cpu",
              "--trainer.callbacks.init_args.output_dir", "data/part"])
    for i in (0, 1):
        (moved / f"{i}.png").rename(tmp_path / "data" / "img" / f"{i}.png")

    import litdata  # noqa: F401  (installed by .ci/run)

    assert optimize_source(src, str(tmp_path / "lit"), num_workers=0) == 5
    streamed = StreamingSource(str(tmp_path / "lit"), shuffle=False)
    rec = next(r for _, r in streamed.records(seed=0, rank=0, world_size=1))
    assert "image" not in rec and len(rec["codes"]) == 16
    gone = write_jsonl(tmp_path / "gone.jsonl", [{"image": "nope.png", "caption": "c"}] * 2)
    with pytest.raises(ValueError, match="none of the 2 records could be stored"):
        optimize_source(JsonlSource(str(gone)), str(tmp_path / "lit_empty"), num_workers=0)
