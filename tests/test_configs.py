"""Every shipped entry config parses, and the Janus-Pro stage configs fit (fast_dev_run) at tiny size."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lit_janus.cli import expand_defaults, main

ROOT = Path(__file__).resolve().parents[1]
def _names_model(path: Path) -> bool:
    """Whether a config (with what it stacks on) names the model class: an entry config, not an
    overlay meant to be stacked on one (e.g. shapes/gpu.yaml) or a pipeline recipe (`stages:`)."""
    data = yaml.safe_load(path.read_text()) or {}
    if "stages" in data:
        return False
    if "class_path" in (data.get("model") or {}):
        return True
    return any(_names_model(path.parent / d) for d in data.get("defaults") or [])


ENTRY_CONFIGS = sorted(p for d in ("janus_pro_1b", "janus_pro_7b", "shapes", "predict")
                       for p in (ROOT / "configs" / d).glob("*.yaml") if _names_model(p))
STAGES = sorted((ROOT / "configs").glob("janus_pro_*/stage*.yaml"))


def test_there_are_configs_for_every_stage():
    assert [p.relative_to(ROOT / "configs").as_posix() for p in STAGES] == [
        f"janus_pro_{s}/stage{i}.yaml" for s in ("1b", "7b") for i in (1, 2, 3)]


@pytest.mark.parametrize("config", ENTRY_CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_parses(config, capsys):
    sub = "predict" if "predict" in config.parts else "fit"
    with pytest.raises(SystemExit) as e:
        main([sub, "--config", str(config), "--print_config"])
    assert e.value.code == 0
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("size,stage,lr,warmup,steps,batch,ratio", [
    ("1b", 1, 1e-3, 600, 20000, 256, (1, 0, 3)), ("1b", 2, 1e-4, 5000, 270000, 512, (2, 3, 5)),
    ("1b", 3, 4e-5, 0, 80000, 128, (5, 1, 4)), ("7b", 1, 1e-3, 600, 20000, 256, (1, 0, 3)),
    ("7b", 2, 1e-4, 5000, 270000, 512, (2, 3, 5)), ("7b", 3, 4e-5, 0, 40000, 128, (5, 1, 4)),
])
def test_stage_configs_reproduce_table_2(tmp_path, monkeypatch, size, stage, lr, warmup, steps, batch, ratio):
    _write_data(tmp_path)  # the sources check their files when instantiated
    monkeypatch.chdir(tmp_path)
    cli = main(["--config", str(ROOT / f"configs/janus_pro_{size}/stage{stage}.yaml"),
                "--model.init_args.config", "shapes", "--model.init_args.init_from", "null",
                "--model.init_args.tokenizer", "shapes", "--data.init_args.tokenizer", "shapes",
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                "--trainer.logger", "false"], run=False)
    cfg = cli.config
    m, d, t = cfg.model.init_args, cfg.data.init_args, cfg.trainer
    assert m.stage == stage and t.max_steps == steps and t.gradient_clip_val == 1.0
    assert m.optimizer.init_args.lr == lr and tuple(m.optimizer.init_args.betas) == (0.9, 0.95)
    assert m.optimizer.init_args.weight_decay == 0.0 and m.scheduler.init_args.warmup_steps == warmup
    assert d.global_batch_size == batch and (d.ratio.und, d.ratio.text, d.ratio.t2i) == ratio
    assert d.pack_length == 4096 and d.cfg_dropout == 0.1
    assert cli.model.config.name == "shapes"


def _write_data(root: Path, n: int = 6):
    """Generated manifests and an ImageNet-style folder, at the relative paths the configs use."""
    g = torch.Generator().manual_seed(0)
    (root / "data/img").mkdir(parents=True)
    for i in range(n):
        arr = (torch.rand(40 + i, 30, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / f"data/img/{i}.png")
    rows = {
        "und.jsonl": [{"image": f"img/{i}.png", "question": "what colour?", "answer": "green"} for i in range(n)],
        "text.jsonl": [{"text": "the triangle is left of the circle."} for _ in range(n)],
        "t2i.jsonl": [{"image": f"img/{i}.png", "caption": "a photo of a red circle"} for i in range(n)],
    }
    for name, recs in rows.items():
        (root / "data" / name).write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for cls in ("red circle", "blue square"):
        (root / f"data/imagenet/train/{cls}").mkdir(parents=True)
        for i in range(2):
            Image.open(root / f"data/img/{i}.png").save(root / f"data/imagenet/train/{cls}/{i}.png")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_fits_with_fast_dev_run(tmp_path, monkeypatch, tiny_hf_dir, stage):
    _write_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / f"configs/janus_pro_1b/stage{stage}.yaml"),
          "--model.init_args.config", "null", "--model.init_args.init_from", str(tiny_hf_dir),
          "--model.init_args.tokenizer", str(tiny_hf_dir), "--model.init_args.activation_checkpointing", "false",
          "--data.init_args.tokenizer", str(tiny_hf_dir), "--data.init_args.image_size", "32",
          "--data.init_args.num_image_tokens", "16", "--data.init_args.max_length", "512",
          "--data.init_args.pack_length", "512", "--data.init_args.num_workers", "0",
          "--data.init_args.global_batch_size", str({1: 4, 2: 10, 3: 10}[stage]),
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
          "--trainer.precision", "32-true", "--trainer.fast_dev_run", "true"])


def test_stage_configs_run_on_two_devices_from_the_command_line(tmp_path, tiny_hf_dir):
    """`python main.py fit --config configs/janus_pro_1b/stage1.yaml`, then `stage2.yaml` (which starts from
    stage 1's sharded last.ckpt), on one node with several devices: Lightning starts ranks 1..N-1 by running
    the command line again. It was rewritten in place with the expanded configs (YAML text after --config),
    so every other rank died with 'config file not found'."""
    import subprocess
    import sys

    _write_data(tmp_path)
    tiny = ["--model.init_args.config", "null", "--model.init_args.tokenizer", str(tiny_hf_dir),
            "--model.init_args.activation_checkpointing", "false",
            "--data.init_args.tokenizer", str(tiny_hf_dir), "--data.init_args.image_size", "32",
            "--data.init_args.num_image_tokens", "16", "--data.init_args.max_length", "512",
            "--data.init_args.pack_length", "512", "--data.init_args.num_workers", "0",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "32-true",
            "--trainer.max_steps", "1"]
    for stage, extra in ((1, ["--model.init_args.init_from", str(tiny_hf_dir), "--data.init_args.global_batch_size", "8"]),
                         (2, ["--data.init_args.global_batch_size", "20"])):  # stage 2: its own init_from
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "fit", "--config",
                               str(ROOT / f"configs/janus_pro_1b/stage{stage}.yaml"), *tiny, *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        checkpoints = tmp_path / f"runs/janus_pro_1b_stage{stage}/checkpoints"
        assert len(list((checkpoints / "last.ckpt").glob("*.distcp"))) == 2  # both ranks trained, wrote a shard
        assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".") or p.name.endswith(".old")]
    hparams = yaml.safe_load((tmp_path / "runs/janus_pro_1b_stage2/hparams.yaml").read_text())
    assert hparams["init_from"] == "runs/janus_pro_1b_stage1/checkpoints/last.ckpt"  # stage 2 started there


def test_defaults_expand_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("trainer: {max_steps: 1}\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\ntrainer: {max_steps: 2}\n")
    (tmp_path / "c.yaml").write_text("defaults: [b.yaml]\nseed_everything: 3\n")
    out = expand_defaults(tmp_path / "c.yaml")
    assert out[0].endswith("a.yaml") and "max_steps: 2" in out[1] and "seed_everything: 3" in out[2]
    (tmp_path / "loop.yaml").write_text("defaults: [loop.yaml]\n")
    with pytest.raises(ValueError, match="includes itself"):
        expand_defaults(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        expand_defaults(tmp_path / "missing.yaml")


@pytest.mark.parametrize("trainer", ["cpu", "gpu"])
def test_a_trainer_file_stacked_on_a_stage_file_moves_it_and_keeps_its_run(trainer, capsys):
    """`--config configs/janus_pro_1b/stage2.yaml --config configs/trainer/cpu.yaml` is a plain one-device
    run (not fsdp2 over gloo) whose checkpoints stay under the stage's run name (the README's resume path)."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/janus_pro_1b/stage2.yaml"),
              "--config", str(ROOT / f"configs/trainer/{trainer}.yaml"), "--print_config"])
    c = yaml.safe_load(capsys.readouterr().out)
    assert c["trainer"]["strategy"] == "auto" and c["trainer"]["devices"] == 1
    assert c["trainer"]["logger"]["init_args"]["name"] == "janus_pro_1b_stage2"
    assert c["model"]["init_args"]["activation_checkpointing"] is (trainer == "gpu")


def test_ckpt_path_of_another_run_is_refused(tmp_path):
    """LightningCLI replaces the parsed model arguments with the checkpoint's: a Stage I checkpoint passed
    to the Stage II config as --ckpt_path trained stage 1 again, without a word."""
    import torch

    torch.save({"hyper_parameters": {"stage": 1, "init_from": "runs/init"}}, tmp_path / "stage1.ckpt")
    args = ["fit", "--config", str(ROOT / "configs/shapes/stage2.yaml"), "--model.init_args.init_from", "runs/init",
            "--ckpt_path", str(tmp_path / "stage1.ckpt")]
    with pytest.raises(ValueError, match=r"is another run \(stage 1 there, 2 here\).*init_from"):
        main(args)
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="broken.ckpt is not a readable Lightning checkpoint"):
        main(args[:-1] + [str(tmp_path / "broken.ckpt")])


def test_an_error_building_the_model_is_the_last_line(tmp_path):
    """jsonargparse wraps what the model's __init__ raised in 'Does not validate against any of the Union
    subtypes' and a config dump; the CLI raises the error that says what to fix."""
    from lit_janus.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        main(["fit", "--config", str(ROOT / "configs/shapes/stage2.yaml"), "--model.init_args.init_from",
              str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 4"):
        main(["fit", "--config", str(ROOT / "configs/shapes/stage2.yaml"), "--model.init_args.stage", "4"])
