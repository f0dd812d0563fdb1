import pytest
import torch
import lightning as L

from lit_janus.module import PARTS, JanusModule, WarmupConstantLR
from synthetic import SyntheticData


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                gradient_clip_val=1.0)
    args.update(kw)
    return L.Trainer(**args)


def _module(tiny_hf_dir, **kw):
    opt = lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)  # noqa: E731
    return JanusModule(init_from=str(tiny_hf_dir), optimizer=opt, **kw)


@pytest.mark.parametrize("stage,trainable", [
    (1, {"aligner", "gen_embed", "gen_aligner", "gen_head"}),
    (2, {"aligner", "gen_embed", "gen_aligner", "gen_head", "llm"}),
    (3, {"aligner", "gen_embed", "gen_aligner", "gen_head", "llm", "vision"}),
])
def test_stage_freeze_policy(tmp_path, tiny_hf_dir, tiny_processor, stage, trainable):
    module = _module(tiny_hf_dir, stage=stage)
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.janus.named_parameters()}
    _trainer(tmp_path).fit(module, SyntheticData(tiny_processor))
    changed_parts = set()
    for name, p in module.model.janus.named_parameters():
        part = next(k for k, prefixes in PARTS.items() if name.startswith(prefixes))
        changed = not torch.equal(before[name], p.detach())
        assert p.requires_grad == (part in trainable), name
        if changed:
            assert part in trainable, f"{name} ({part}) changed in stage {stage}"
            changed_parts.add(part)
    assert changed_parts == trainable  # every trained part actually moved


@pytest.mark.parametrize("preset", ["janus-pro-1b", "janus-pro-7b", "shapes", "tiny"])
def test_presets_have_no_dropout(preset):
    """Why frozen parts may stay in train mode (JanusModule): no module of any preset drops anything."""
    from lit_janus.config import Config

    hf = Config.from_name(preset).to_hf()
    rates = {f"{sub}.{k}": v for sub in ("text_config", "vision_config", "vq_config")
             for k, v in getattr(hf, sub).to_dict().items() if "drop" in k}
    assert rates and all(v == 0 for v in rates.values()), rates


def test_unknown_part_and_stage():
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        JanusModule(config="tiny", tokenizer="x", stage=4)
    with pytest.raises(ValueError, match="unknown trainable part"):
        JanusModule(config="tiny", tokenizer="x", trainable=["llm", "decoder"])


def test_lr_scale_gives_a_part_its_own_learning_rate(tiny_hf_dir):
    from functools import partial

    module = JanusModule(init_from=str(tiny_hf_dir), stage=3, lr_scale={"vision": 0.1, "vq": 0.5},  # vq: frozen
                         optimizer=partial(torch.optim.AdamW, lr=1e-3), scheduler=partial(WarmupConstantLR, warmup_steps=2))
    module.configure_model()
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    by_lr = {g["lr_scale"]: g for g in opt.param_groups}
    assert set(by_lr) == {1.0, 0.1}
    vision = {id(p) for p in module.model.vision.parameters()}
    assert {id(p) for p in by_lr[0.1]["params"]} == vision
    assert not vision & {id(p) for p in by_lr[1.0]["params"]}
    assert sched.base_lrs == [pytest.approx(g["lr_scale"] * 1e-3) for g in opt.param_groups]
    assert by_lr[0.1]["lr"] == pytest.approx(0.5 * 1e-4)  # warm-up step 1 of 2, scaled alike
    plain = _module(tiny_hf_dir, stage=3)
    plain.configure_model()
    assert len(plain.configure_optimizers().param_groups) == 1  # no lr_scale: one group, as before
    with pytest.raises(ValueError, match="lr_scale"):
        JanusModule(config="tiny", tokenizer="x", lr_scale={"siglip": 0.1})
    with pytest.raises(ValueError, match="lr_scale"):
        JanusModule(config="tiny", tokenizer="x", lr_scale={"vision": 0})


def test_warmup_then_constant():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupConstantLR(opt, warmup_steps=4)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]


def test_warmup_constant_then_cosine_cool_down():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupConstantLR(opt, warmup_steps=2, decay_start=4, decay_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # cos(pi t / 4) for t = 0..4 gives 1, 0.854, 0.5, 0.146, 0 of the base LR; it stays at 0 after
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 1.7071068, 1.0, 0.2928932, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs decay_start"):
        WarmupConstantLR(opt, warmup_steps=10, decay_steps=5)
    with pytest.raises(ValueError, match="at or after the warm-up"):
        WarmupConstantLR(opt, warmup_steps=10, decay_start=5, decay_steps=5)
    with pytest.raises(ValueError, match="final_fraction"):
        WarmupConstantLR(opt, final_fraction=1.5)


def test_stage0_schedule_is_the_cool_down_from_the_end_of_the_warm_up():
    from lit_janus.shapes.vq_training import warmup_cosine

    def lrs(*args):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = warmup_cosine(opt, *args), []
        for _ in range(8):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    # warm-up over 2 steps, then cosine from 1 to 0.1 over steps 2..6, then 0.1
    assert lrs(2, 6, 0.1) == pytest.approx([0.5, 1.0, 1.0, 0.8681981, 0.55, 0.2318019, 0.1, 0.1])
    assert lrs(2, None, 0.1) == lrs(2, 6, 1.0) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_logs_three_losses_and_encodes_images_on_the_fly(tmp_path, tiny_hf_dir, tiny_processor):
    module = _module(tiny_hf_dir, stage=2)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, SyntheticData(tiny_processor, pixels=True))
    m = trainer.callback_metrics
    for key in ("train/und_loss", "train/text_loss", "train/gen_loss", "train/gen_acc", "train/grad_norm",
                "train/tokens_per_sec"):
        assert key in m and torch.isfinite(m[key]), key


def test_step_metrics_are_logged_only_when_the_logger_writes(tmp_path, tiny_hf_dir, tiny_processor):
    """Every `self.log` costs host time (and the counts a host sync): the per-task metrics are logged
    at the steps Lightning writes (every log_every_n_steps) and at the last step, the loss at every step."""
    module = _module(tiny_hf_dir, stage=2)
    trainer = _trainer(tmp_path, max_steps=5, log_every_n_steps=3)
    logged = []
    log = module.log
    module.log = lambda name, *a, **k: (logged.append((trainer.global_step, name)), log(name, *a, **k))[1]
    trainer.fit(module, SyntheticData(tiny_processor, pixels=True))
    per_step = {s: {n for t, n in logged if t == s} for s in range(5)}
    for s in range(5):
        assert "train/loss" in per_step[s]
        full = s + 1 in (3, 5)  # Lightning's logging step (steps counted from 1), and the last one
        for key in ("train/und_loss", "train/gen_acc", "train/grad_norm", "train/tokens_per_sec"):
            assert (key in per_step[s]) == (full and (key != "train/tokens_per_sec" or s > 0)), (s, key)
    assert "train/grad_norm" in trainer.callback_metrics


def test_resume_gives_the_same_losses(tmp_path, tiny_hf_dir, tiny_processor):
    """4 uninterrupted steps vs 2 steps + checkpoint + resume for 2 more (model, AdamW and LR
    schedule state all restored). The synthetic data repeats one batch, so only state matters."""
    from lightning.pytorch.callbacks import Callback

    class Losses(Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    def module():
        sched = lambda opt: WarmupConstantLR(opt, warmup_steps=3)  # noqa: E731
        return _module(tiny_hf_dir, stage=2, scheduler=sched)

    straight = Losses()
    torch.manual_seed(0)
    _trainer(tmp_path / "a", max_steps=4, callbacks=[straight]).fit(module(), SyntheticData(tiny_processor))
    first, second = Losses(), Losses()
    t = _trainer(tmp_path / "b", max_steps=2, callbacks=[first], enable_checkpointing=True)
    t.fit(module(), SyntheticData(tiny_processor))
    ckpt = tmp_path / "b" / "mid.ckpt"
    t.save_checkpoint(ckpt)
    _trainer(tmp_path / "b", max_steps=4, callbacks=[second]).fit(module(), SyntheticData(tiny_processor), ckpt_path=ckpt)
    assert len(straight.values) == 4 and len(first.values) + len(second.values) == 4
    assert first.values + second.values == pytest.approx(straight.values, rel=1e-5, abs=1e-6)


def test_lightning_checkpoint_exports_and_inits_next_stage(tmp_path, tiny_hf_dir, tiny_processor):
    from lit_janus.checkpoint import load_any, load_pretrained
    from lit_janus.convert import main as convert_main

    module = _module(tiny_hf_dir, stage=2)
    t = _trainer(tmp_path, max_steps=1)
    t.fit(module, SyntheticData(tiny_processor))
    ckpt = tmp_path / "stage2.ckpt"
    t.save_checkpoint(ckpt)
    model, proc = load_any(ckpt)
    assert torch.equal(model.lm_head.weight, module.model.lm_head.weight)
    assert proc.image_id == tiny_processor.image_id
    assert convert_main([str(ckpt), str(tmp_path / "hf")]) == 0
    exported, _ = load_pretrained(tmp_path / "hf")
    assert torch.equal(exported.gen_head.vision_head.weight, module.model.gen_head.vision_head.weight)
    nxt = JanusModule(init_from=str(ckpt), stage=3)  # shapes and tokenizer come from the checkpoint
    nxt.configure_model()
    assert torch.equal(nxt.model.aligner.fc1.weight, module.model.aligner.fc1.weight)


def test_data_tokenised_for_another_model_is_refused(tmp_path, tiny_hf_dir):
    from lit_janus.data import JanusDataModule, ShapesSource

    data = JanusDataModule(tokenizer="shapes", image_size=32, num_image_tokens=16, max_length=512, num_workers=0,
                           global_batch_size=4, t2i=[ShapesSource(kind="t2i", image_size=32)],
                           und=[ShapesSource(kind="qa", image_size=32)])
    with pytest.raises(ValueError, match="do not match the model's.*pad_id"):
        _trainer(tmp_path).fit(_module(tiny_hf_dir), data)


def test_the_data_system_prompt_travels_with_every_checkpoint(tmp_path, tiny_hf_dir, tiny_processor):
    """Training without a system prompt: the Lightning checkpoint, its transformers export and
    transformers' own processor all keep that choice, so predict asks questions as trained."""
    from test_data import manifests
    from transformers import AutoProcessor

    from lit_janus.checkpoint import load_any, load_pretrained, read_config_and_processor
    from lit_janus.convert import main as convert_main
    from lit_janus.data import JanusDataModule, JsonlSource, TaskRatio

    assert tiny_processor.system_prompt  # DeepSeek's default: the data module changes it
    paths = manifests(tmp_path / "data", n=8)
    data = JanusDataModule(tokenizer=str(tiny_hf_dir), image_size=32, num_image_tokens=16, max_length=512,
                           num_workers=0, global_batch_size=4, ratio=TaskRatio(1, 1, 2), system_prompt="",
                           **{t: [JsonlSource(str(p))] for t, p in paths.items()})
    module = _module(tiny_hf_dir, stage=2)
    t = _trainer(tmp_path)
    t.fit(module, data)
    ckpt = tmp_path / "last.ckpt"
    t.save_checkpoint(ckpt)
    assert read_config_and_processor(ckpt)[1].system_prompt == ""
    _, proc = load_any(ckpt)
    assert proc.system_prompt == "" and proc.understanding_ids("q?")[1:3] != tiny_processor.understanding_ids("q?")[1:3]
    assert convert_main([str(ckpt), str(tmp_path / "hf")]) == 0
    assert load_pretrained(tmp_path / "hf")[1].system_prompt == ""
    assert AutoProcessor.from_pretrained(str(tmp_path / "hf")).use_default_system_prompt is False
    assert load_pretrained(tiny_hf_dir)[1].system_prompt == tiny_processor.system_prompt  # default kept


def test_shared_encoder_freezes_the_unused_siglip_and_aligner(tiny_hf_dir):
    """With `und_encoder: vq` SigLIP and its aligner never see a gradient; they are frozen rather than
    left trainable-but-unused (which DDP rejects)."""
    from dataclasses import replace

    from lit_janus.config import Config

    cfg = replace(Config.from_name("tiny"), und_encoder="vq")
    module = JanusModule(config=cfg, tokenizer=str(tiny_hf_dir), stage=3)
    module.configure_model()
    trainable = {n.split(".")[1] for n, p in module.model.janus.named_parameters() if p.requires_grad}
    assert "aligner" not in trainable and "vision_model" not in trainable
    assert {"generation_aligner", "generation_embeddings", "language_model"} <= trainable
    assert "vision" in JanusModule(config="tiny", tokenizer=str(tiny_hf_dir), stage=3).trainable


def test_varlen_attention_trains_under_activation_checkpointing(tmp_path, tiny_hf_dir, tiny_processor):
    """The 1B/7B configs' attention (varlen) with recomputation in backward: the same first-step
    loss and gradient norm as sdpa (on the CPU varlen runs its per-document reference loop)."""
    metrics = {}
    for attn in ("sdpa", "varlen_attention"):
        torch.manual_seed(0)
        module = _module(tiny_hf_dir, stage=2, attn_implementation=attn, activation_checkpointing=True)
        trainer = _trainer(tmp_path / attn, max_steps=1)
        trainer.fit(module, SyntheticData(tiny_processor))
        assert module.model.llm.config._attn_implementation == attn
        metrics[attn] = {k: float(trainer.callback_metrics[k]) for k in ("train/loss", "train/grad_norm")}
    for k, v in metrics["sdpa"].items():
        assert metrics["varlen_attention"][k] == pytest.approx(v, rel=1e-4), (k, metrics)


@pytest.mark.parametrize("sharded", [False, True])
def test_init_from_of_other_shapes_names_the_difference(tiny_hf_dir, tiny_config, sharded):
    """A 1B config with 7B weights: the documented message, naming the fields, also under FSDP2 (whose
    meta-device build never loads the model before materialising it)."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_janus.config import Config

    other = Config(**{**tiny_config.asdict(), "n_layer": tiny_config.n_layer + 1})
    module = JanusModule(config=other, tokenizer=str(tiny_hf_dir), init_from=str(tiny_hf_dir))
    if sharded:
        module._trainer = SimpleNamespace(strategy=ModelParallelStrategy())
    with pytest.raises(ValueError, match=rf"has shapes .* but this run expects .*n_layer {tiny_config.n_layer} vs "
                                         rf"{tiny_config.n_layer + 1}\)"):
        module.configure_model()


def test_validation_data_counters_have_their_own_tags(tmp_path, tiny_hf_dir, tiny_processor):
    """Training's data/* counters are per step; validation's (an epoch sum) go to val_data/*, not onto the
    same tag, where the two interleaved into one zig-zag curve."""
    from synthetic import FixedBatches

    module = _module(tiny_hf_dir, stage=2)
    module.configure_model()
    batch = dict(FixedBatches(tiny_processor, 1, 64)[0])
    batch |= {"cfg_dropped": torch.tensor([1]), "skipped_t2i": torch.tensor([2])}
    tags = {}
    module.log = lambda name, value, **kw: tags.setdefault(name, kw)
    module._logs_this_step = lambda: True
    module._shared_step(dict(batch), "train")
    module._shared_step(dict(batch), "val")
    assert tags["data/cfg_dropped"]["on_step"] and tags["data/skipped_t2i"]["on_step"]
    assert not tags["val_data/cfg_dropped"]["on_step"] and tags["val_data/skipped_t2i"]["on_epoch"]


@pytest.mark.parametrize("sharded", [False, True])
def test_a_save_killed_half_way_keeps_the_previous_checkpoint(tmp_path, tiny_hf_dir, tiny_processor, sharded):
    """`lit_janus.callbacks.Checkpoint` writes under a temporary name and renames. Lightning wrote in place:
    a sharded (FSDP2) `last.ckpt` directory got the new step's shards beside the old ones (and the old
    `meta.pt`), a single file was truncated (its temp-file move is a copy across filesystems)."""
    from pathlib import Path

    from lit_janus.callbacks import Checkpoint

    cb = Checkpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0, every_n_train_steps=1)
    t = _trainer(tmp_path, max_steps=3, callbacks=[cb], enable_checkpointing=True)
    calls = []

    def save(checkpoint, filepath, storage_options=None):  # what the strategy writes, step by step
        calls.append(Path(filepath).name)
        p = Path(filepath)
        p.parent.mkdir(parents=True, exist_ok=True)
        if sharded:
            p.mkdir(parents=True, exist_ok=True)
            (p / f"__0_{len(calls)}.distcp").write_bytes(b"shard")
            if len(calls) == 3:
                raise RuntimeError("killed while writing the shards")
            torch.save({"global_step": checkpoint["global_step"]}, p / "meta.pt")
        else:
            if len(calls) == 3:
                p.write_bytes(b"half a checkpoi")
                raise RuntimeError("killed while writing")
            torch.save({"global_step": checkpoint["global_step"]}, p)

    t.strategy.save_checkpoint = save
    with pytest.raises(RuntimeError, match="killed"):
        t.fit(_module(tiny_hf_dir, stage=2), SyntheticData(tiny_processor))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert calls == [".last.ckpt.partial"] * 3
    if sharded:
        assert sorted(f.name for f in last.iterdir()) == ["__0_2.distcp", "meta.pt"]
        assert torch.load(last / "meta.pt")["global_step"] == 2
    else:
        assert torch.load(last)["global_step"] == 2
    # the next save clears what the killed one left
    again = Checkpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0, enable_version_counter=False)
    t2 = _trainer(tmp_path, max_steps=1, callbacks=[again], enable_checkpointing=True)
    t2.fit(_module(tiny_hf_dir, stage=2), SyntheticData(tiny_processor))
    assert sorted(f.name for f in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=False)["global_step"] == 1


def test_a_save_killed_between_its_renames_resumes_from_the_new_checkpoint(tmp_path, tiny_hf_dir, tiny_processor, monkeypatch):
    """Killed after the old `last.ckpt` moved aside but before the complete partial took its name: the
    resume command (`--ckpt_path .../last.ckpt`) restores it before the CLI reads it, and the run resumes
    from the newest step."""
    from pathlib import Path

    from lit_janus import atomic, checkpoint, cli
    from lit_janus.callbacks import Checkpoint

    ckpts = tmp_path / "ckpt"
    cb = Checkpoint(dirpath=str(ckpts), save_last=True, save_top_k=0, every_n_train_steps=1)
    replace, calls = atomic.os.replace, []

    def replace_then_die(src, dst):
        if Path(dst).parent == ckpts:
            calls.append(Path(dst).name)
            if len(calls) == 5:  # renames: step 1 one, step 2 two, step 3 old aside (4th), killed at the 5th
                raise RuntimeError("killed between the renames")
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(RuntimeError, match="killed between"):
        _trainer(tmp_path, max_steps=3, callbacks=[cb], enable_checkpointing=True).fit(
            _module(tiny_hf_dir, stage=2), SyntheticData(tiny_processor))
    monkeypatch.setattr(atomic.os, "replace", replace)
    last = ckpts / "last.ckpt"
    assert sorted(f.name for f in ckpts.iterdir()) == [".last.ckpt.partial", "last.ckpt.old"]
    with pytest.raises(checkpoint.CheckpointError, match="last.ckpt.old is there"):  # init_from names it
        checkpoint.read_config_and_processor(last)

    seen_by_cli = []

    class Parsed:  # stands in for JanusCLI: what the CLI would find when it parses --ckpt_path
        def __init__(self, **kwargs):
            seen_by_cli.append(sorted(f.name for f in ckpts.iterdir()))

    with pytest.warns(UserWarning, match="restored from a save that was interrupted"):
        cli.main(["fit", "--ckpt_path", str(last)], cli_class=Parsed)
    assert seen_by_cli == [["last.ckpt"]]
    t = _trainer(tmp_path, max_steps=4, callbacks=[Checkpoint(dirpath=str(ckpts), save_last=True, save_top_k=0,
                                                          enable_version_counter=False)],
                 enable_checkpointing=True)
    seen = []
    load = t.strategy.load_checkpoint

    def load_and_note(path, **kw):
        ckpt = load(path, **kw)
        seen.append(ckpt["global_step"])
        return ckpt

    t.strategy.load_checkpoint = load_and_note
    t.fit(_module(tiny_hf_dir, stage=2), SyntheticData(tiny_processor), ckpt_path=str(last))
    assert seen == [3]  # the complete partial, not the older .old (step 2)
    assert sorted(f.name for f in ckpts.iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=False)["global_step"] == 4


def test_a_diverged_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, tiny_hf_dir, tiny_processor):
    """NaN weights are never saved over `last.ckpt`; bad loss weights are a config error."""
    from lit_janus.callbacks import Checkpoint
    from lit_janus.module import LossWeights

    for bad in ({"und": float("nan")}, {"und": -1.0}, {"und": 0.0, "text": 0.0, "gen": 0.0}):
        with pytest.raises(ValueError, match="loss_weights"):
            LossWeights(**bad)

    module = _module(tiny_hf_dir, stage=2)
    step = module.on_train_batch_end

    def poison_after_step_2(outputs, batch, batch_idx):  # after the step-2 save: what a blown-up update leaves
        step(outputs, batch, batch_idx)
        if module.trainer.global_step == 2:
            with torch.no_grad():
                next(module.model.parameters()).fill_(float("nan"))

    module.on_train_batch_end = poison_after_step_2
    cb = Checkpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0, every_n_train_steps=1)
    t = _trainer(tmp_path, max_steps=5, callbacks=[cb], enable_checkpointing=True, log_every_n_steps=50)
    with pytest.raises(FloatingPointError, match="a weight about to be saved is not finite at step 3"):
        t.fit(module, SyntheticData(tiny_processor))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                             if v.is_floating_point())
    # without a save in between, the loss check of a logging step stops it before the next update
    module = _module(tiny_hf_dir, stage=2)
    module.on_train_start = lambda: [p.data.fill_(float("nan")) for p in list(module.model.parameters())[:1]]
    with pytest.raises(FloatingPointError, match=r"the training loss \(nan\) is not finite at step 0"):
        _trainer(tmp_path, max_steps=3, log_every_n_steps=1).fit(module, SyntheticData(tiny_processor))
