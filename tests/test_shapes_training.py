"""ShapesWorld training: stage 0a (VQ), stage 0b (SigLIP), assembling the Stage I checkpoint, the pipeline."""

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
# 32 px images, 4x4 tokens: the smallest sizes the `shapes` world and the Janus classes accept.
SMALL = dict(n_layer=1, n_embd=64, n_head=2, n_query_groups=2, intermediate_size=128, max_position_embeddings=256,
             vision_width=32, vision_layers=1, vision_heads=2, image_size=32, codebook_size=64)


def _fixed_images(n=8, image_size=32, captions=False, kind="mixed"):
    from lit_janus.shapes.vq_training import ShapesImages

    ds = ShapesImages(n, seed=5, image_size=image_size, kind=kind, captions=captions)
    items = [ds[i] for i in range(n)]
    if captions:
        return torch.stack([x for x, _ in items]), [t for _, t in items]
    return torch.stack(items)


def _train(module, batch, steps):
    """Plain optimisation of the module's own training_step on one fixed batch (logging off)."""
    module.log = module.log_dict = lambda *a, **k: None
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for i in range(steps):
        loss = module.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


# ---------------------------------------------------------------------------------------------
# stage 0a: VQ
# ---------------------------------------------------------------------------------------------
def test_quantizer_is_deepseeks_l2_lookup_and_decode_path_matches_inference():
    from lit_janus.shapes.vq_training import VQModule, quantize_l2
    from lit_janus.vq import vq_encode

    torch.manual_seed(0)
    m = VQModule(overrides=SMALL, channels_last=False).eval()
    x = _fixed_images(4)
    with torch.no_grad():
        z = m.vq.quant_conv(m.vq.encoder(x))
        z_q, codes, cb, commit, z_flat = quantize_l2(z, m.vq.quantize.embedding.weight)
        assert torch.equal(codes, vq_encode(m.vq, x))  # the lookup the later stages tokenise with
        assert torch.allclose(z_flat.norm(dim=-1), torch.ones(z_flat.shape[0]), atol=1e-5)
        # training decodes exactly what JanusVQVAE.decode (inference) decodes
        train_recon = m.vq.decoder(m.vq.post_quant_conv(z_q))
        assert torch.allclose(train_recon, m.vq.decode(codes), atol=1e-5)
        assert torch.allclose(m(x)["recon"], train_recon, atol=1e-5)
    assert float(commit) == pytest.approx(0.25 * float(cb), rel=1e-4)  # same distance, beta-weighted


def test_straight_through_gradient_reaches_encoder_and_codebook():
    from lit_janus.shapes.vq_training import VQModule

    torch.manual_seed(0)
    m = VQModule(overrides=SMALL)
    x = _fixed_images(2)
    m.losses(x, m(x))["loss"].backward()
    assert m.vq.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.vq.quantize.embedding.weight.grad.abs().sum() > 0
    assert m.vq.decoder.conv_out.weight.grad.abs().sum() > 0


def test_vq_module_improves_its_loss_and_restarts_dead_codes():
    from lit_janus.shapes.vq_training import VQModule

    torch.manual_seed(0)
    m = VQModule(overrides=SMALL, lr=2e-3, warmup_steps=0, restart_every=0, log_images_every=0)
    x = _fixed_images(8)
    losses = _train(m, x, 12)
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    # dead-code restart: unused codes are moved onto encoder outputs
    m.usage.zero_()
    m.usage[:5] = 1.0
    before = m.vq.quantize.embedding.weight.detach().clone()
    z = torch.nn.functional.normalize(torch.randn(10, m.config.codebook_dim), dim=-1)
    m._restart_dead_codes(z)
    after = m.vq.quantize.embedding.weight.detach()
    assert torch.equal(after[:5], before[:5]) and not torch.equal(after[5:], before[5:])
    assert float(m.usage.sum()) == 0


def test_crops_stay_on_the_token_grid():
    from lit_janus.shapes.vq_training import ShapesImages, image_to_pixels

    full = ShapesImages(10, seed=1, image_size=64)
    crops = ShapesImages(10, seed=1, image_size=64, crop=32, crop_align=8)
    for i in range(10):
        c, f = crops[i], full[i]
        assert c.shape == (3, 32, 32)
        hits = [(y, x) for y in range(0, 33, 8) for x in range(0, 33, 8) if torch.equal(f[:, y:y + 32, x:x + 32], c)]
        assert hits, i
    with pytest.raises(ValueError):
        ShapesImages(4, image_size=64, crop=30)
    assert image_to_pixels(full.world.render(full.scene(0))).min() >= -1


# ---------------------------------------------------------------------------------------------
# stage 0b: SigLIP
# ---------------------------------------------------------------------------------------------
def test_sigmoid_loss_matches_siglip_definition():
    from lit_janus.shapes.siglip import sigmoid_loss

    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    t, b = torch.tensor(2.3), torch.tensor(-10.0)
    loss, logits = sigmoid_loss(img, txt, t, b)
    zi, zt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    ref_logits = zi @ zt.t() * t.exp() + b
    labels = 2 * torch.eye(5) - 1
    ref = -torch.log(torch.sigmoid(labels * ref_logits)).sum() / 5
    assert torch.allclose(logits, ref_logits) and torch.allclose(loss, ref)


def test_siglip_module_init_and_improves_its_loss():
    import math

    from lit_janus.shapes.siglip import SigLIPModule

    torch.manual_seed(0)
    m = SigLIPModule(overrides=SMALL, text_width=32, embed_dim=32, lr=2e-3, warmup_steps=0)
    assert float(m.t_prime) == pytest.approx(math.log(10)) and float(m.bias) == -10.0
    batch = _fixed_images(16, captions=True, kind="scenes")
    losses = _train(m, batch, 15)
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    # duplicate descriptions are positives of each other, not false negatives
    pixels, texts = batch
    dup = (torch.cat([pixels[:1], pixels[:1]]), [texts[0], texts[0]])
    m.log = lambda *a, **k: None
    import lit_janus.shapes.siglip as siglip

    seen, real = [], siglip.sigmoid_loss
    siglip.sigmoid_loss = lambda *a: seen.append(a[4]) or real(*a)  # the positives matrix it is given
    try:
        assert torch.isfinite(m.step(dup, "train"))
    finally:
        siglip.sigmoid_loss = real
    assert seen[0].tolist() == [[True, True], [True, True]]  # both images match both (equal) captions


def test_word_tokenizer_pads_caches_and_refuses_unknown_words():
    from lit_janus.shapes.siglip import WordTokenizer

    tok = WordTokenizer()
    ids = tok(["a red circle", "a red circle and a blue square", "a red circle"])
    assert ids.shape == (3, 7) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[2]) and ids[0, 3:].eq(0).all() and ids[1].ne(0).all()
    assert [tok.words[i] for i in ids[0, :3]] == ["a", "red", "circle"]
    assert torch.equal(tok(["a red circle"], max_length=2), ids[:1, :2])
    assert len(tok._cache) == 2  # repeated captions are split once
    with pytest.raises(ValueError, match="outside ShapesWorld's vocabulary"):
        tok(["a zebra circle"])


def test_hard_negatives_differ_in_one_attribute_and_enter_the_loss_as_negatives():
    from lit_janus.shapes.siglip import SigLIPModule
    from lit_janus.shapes.vq_training import ShapesImages
    from lit_janus.shapes.world import describe, split_words

    ds = ShapesImages(32, seed=1, image_size=32, kind="scenes", captions=True, hard_negatives=2)
    for i in range(32):
        _, text, *negs = ds[i]
        assert text == describe(ds.scene(i).objects) and len(negs) == 2
        for neg in negs:  # the same objects in the same order, one word (a shape or a colour) changed
            a, b = ([w for w in split_words(t) if w not in ("a", "an")] for t in (text, neg))
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    again = ShapesImages(32, seed=1, image_size=32, kind="scenes", captions=True, hard_negatives=2)
    assert again[3][1:] == ds[3][1:] and torch.equal(again[3][0], ds[3][0])  # a pure function of the index
    with pytest.raises(ValueError, match="set captions=True"):
        ShapesImages(4, hard_negatives=1)
    torch.manual_seed(0)
    m = SigLIPModule(overrides=SMALL, text_width=32, embed_dim=32, lr=2e-3, warmup_steps=0)
    m.log = m.log_dict = lambda *a, **k: None
    seen = {}
    encode = m.encode_texts
    m.encode_texts = lambda texts: seen.setdefault("texts", list(texts)) and encode(texts)
    items = [ds[i] for i in range(4)]
    batch = (torch.stack([x[0] for x in items]), [x[1] for x in items], [x[2] for x in items], [x[3] for x in items])
    assert torch.isfinite(m.step(batch, "train"))
    assert seen["texts"] == batch[1] + batch[2] + batch[3]  # 4 images against 4 + 2x4 captions


def test_grounded_captions_name_each_objects_cell_left_to_right():
    from lit_janus.shapes.vq_training import ShapesImageDataModule, ShapesImages
    from lit_janus.shapes.world import Obj, grounded_caption

    objs = [Obj("square", "blue", "large", 0.8, 0.3), Obj("circle", "red", "small", 0.1, 0.9)]
    assert grounded_caption(objs) == "red circle 0 3 , blue square 3 1"
    assert grounded_caption(objs, grid=2) == "red circle 0 1 , blue square 1 0"
    with pytest.raises(ValueError, match="grid 8"):
        grounded_caption(objs, grid=8)
    ds = ShapesImages(8, seed=3, image_size=32, kind="scenes", captions=True, hard_negatives=2, grounded=True)
    plain = ShapesImages(8, seed=3, image_size=32, kind="scenes", captions=True, hard_negatives=2)
    for i in range(8):
        _, text, grounded, *negs = ds[i]
        assert grounded == grounded_caption(ds.scene(i).objects) and (text, *negs) == plain[i][1:]
    with pytest.raises(ValueError, match="set captions=True"):
        ShapesImageDataModule(grounded=True)


def test_locca_captioner_learns_and_must_match_the_data():
    import lightning as L

    from lit_janus.shapes.siglip import SigLIPModule
    from lit_janus.shapes.vq_training import ShapesImageDataModule, ShapesImages

    torch.manual_seed(0)
    m = SigLIPModule(overrides=SMALL, text_width=32, embed_dim=32, lr=2e-3, warmup_steps=0, locca_weight=1.0)
    ds = ShapesImages(8, seed=5, image_size=32, kind="scenes", captions=True, hard_negatives=1, grounded=True)
    items = [ds[i] for i in range(8)]
    batch = (torch.stack([x[0] for x in items]), *([x[k] for x in items] for k in (1, 2, 3)))
    logged = {}
    m.log = lambda name, value, **k: logged.setdefault(name, []).append(float(value))
    m.log_dict = lambda *a, **k: None
    opt = m.configure_optimizers()["optimizer"]
    for _ in range(15):
        opt.zero_grad()
        total = m.step(batch, "train")
        total.backward()
        opt.step()
    # the total is the sigmoid loss plus the captioning loss, and the captioner learns its 8 captions
    assert float(total) == pytest.approx(logged["train/loss"][-1] + logged["train/locca_loss"][-1], rel=1e-5)
    assert logged["train/locca_loss"][-1] < 0.7 * logged["train/locca_loss"][0]
    with pytest.raises(ValueError, match="locca_weight must be"):
        SigLIPModule(overrides=SMALL, locca_weight=-1)
    for weight, grounded in ((1.0, False), (0.0, True)):  # a mismatch would misread the batch
        dm = ShapesImageDataModule(batch_size=2, image_size=32, kind="scenes", captions=True, grounded=grounded,
                                   train_length=4, val_length=2)
        trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        with pytest.raises(ValueError, match="disagree"):
            trainer.fit(SigLIPModule(overrides=SMALL, text_width=32, embed_dim=32, locca_weight=weight), dm)


# ---------------------------------------------------------------------------------------------
# exporting and assembling
# ---------------------------------------------------------------------------------------------
def _stage0_checkpoints(tmp_path):
    """Save both stage-0 modules as Lightning checkpoints (via a 1-step Trainer run)."""
    import lightning as L

    from lit_janus.shapes.siglip import SigLIPModule
    from lit_janus.shapes.vq_training import ShapesImageDataModule, VQModule

    out = {}
    for name, module, dm in (
        ("vq", VQModule(overrides=SMALL, log_images_every=0),
         ShapesImageDataModule(batch_size=2, image_size=32, val_length=2)),
        ("vision", SigLIPModule(overrides=SMALL, text_width=32, embed_dim=32),
         ShapesImageDataModule(batch_size=4, image_size=32, captions=True, kind="scenes", val_length=4)),
    ):
        trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, dm)
        path = tmp_path / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        out[name] = (path, module)
    return out


def test_stage0_weights_drop_into_januspro_and_assemble_loads(tmp_path):
    from lit_janus.checkpoint import load_any
    from lit_janus.config import Config
    from lit_janus.model import JanusPro
    from lit_janus.shapes.assemble import assemble, export_stage0

    ck = _stage0_checkpoints(tmp_path)
    cfg = Config.from_name("shapes", **SMALL)
    ref = JanusPro(cfg)
    assert set(ck["vq"][1].vq.state_dict()) == set(ref.vq.state_dict())
    assert set(ck["vision"][1].vision.state_dict()) == set(ref.vision.state_dict())

    stage0 = export_stage0(ck["vq"][0], ck["vision"][0], tmp_path / "stage0")
    assert json.loads((stage0 / "stage0.json").read_text())["config"]["codebook_size"] == 64
    mode = lambda name: (stage0 / name).stat().st_mode & 0o777  # noqa: E731 (safetensors alone wrote 0600)
    assert mode("vq.safetensors") == mode("vision.safetensors") == mode("stage0.json")
    for src in ((ck["vq"][0], ck["vision"][0]), (stage0 / "vq.safetensors", stage0 / "vision.safetensors")):
        out = assemble(*src, tmp_path / "init", "shapes", **SMALL)
        model, processor = load_any(out)
        for k, v in ck["vq"][1].vq.state_dict().items():
            assert torch.equal(model.vq.state_dict()[k], v), k
        for k, v in ck["vision"][1].vision.state_dict().items():
            assert torch.equal(model.vision.state_dict()[k], v), k
        assert model.config.n_layer == 1 and processor.num_image_tokens == 16
    with pytest.raises(ValueError, match="do not fit"):
        assemble(stage0 / "vq.safetensors", stage0 / "vision.safetensors", tmp_path / "bad", "shapes")


def test_probe_finds_position_in_a_random_encoder_and_none_without_position_embeddings(tmp_path):
    from safetensors.torch import save_file
    from transformers import JanusVisionModel

    from lit_janus.config import Config
    from lit_janus.shapes.probe import probe

    cfg = Config.from_name("shapes")  # 64 px, 8 x 8 patches: SMALL's 4 x 4 grid of 8 px objects says too little
    fresh = probe("random", cfg, n_scenes=300)["encoder"]
    assert set(fresh) == {"column", "row", "color", "shape"}
    assert fresh["column"]["accuracy"] > fresh["column"]["majority"] + 0.3
    assert fresh["color"]["accuracy"] > 0.9
    torch.manual_seed(0)  # the same weights as "random", but nothing says where a patch is
    vision = JanusVisionModel(cfg.to_hf().vision_config)
    sd = {k: v.clone() for k, v in vision.state_dict().items()}
    sd["embeddings.position_embedding.weight"].zero_()
    save_file(sd, str(tmp_path / "vision.safetensors"))
    blind = probe(str(tmp_path / "vision.safetensors"), cfg, n_scenes=300)
    assert list(blind) == ["encoder"]
    assert blind["encoder"]["column"]["accuracy"] < fresh["column"]["accuracy"] - 0.3
    assert blind["encoder"]["color"]["accuracy"] > 0.9


def test_probe_reads_a_full_checkpoint_before_and_after_the_aligner(tmp_path):
    from lit_janus.checkpoint import build_model, processor_for, save_transformers
    from lit_janus.config import Config
    from lit_janus.shapes.probe import probe

    cfg = Config.from_name("shapes", n_layer=1, n_embd=64, n_head=2, n_query_groups=2, intermediate_size=128)
    processor = processor_for("shapes", cfg)
    cfg.image_token_id = processor.image_id
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # an aligner that passes on one feature of 128: where a patch is gets lost
        for p in model.aligner.parameters():
            p.zero_()
        model.aligner.fc1.weight[0, 0] = model.aligner.hidden_layers[0].weight[0, 0] = 1.0
    out = save_transformers(model, processor, tmp_path / "model")
    res = probe(str(out), n_scenes=300)
    assert list(res) == ["encoder", "aligned"]
    assert res["encoder"]["column"]["accuracy"] > res["encoder"]["column"]["majority"] + 0.3
    assert res["aligned"]["column"]["accuracy"] < res["encoder"]["column"]["accuracy"] - 0.3
    with pytest.raises(FileNotFoundError, match="no such file"):
        probe(str(tmp_path / "missing.ckpt"))


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
def test_pipeline_files_parse(capsys):
    from lit_janus.shapes.pipeline import main
    from lit_janus.shapes.pipeline_spec import PRESETS_DIR, PipelineSpec, presets

    names = presets()  # the pipeline files in configs/shapes, not the stage configs beside them
    assert {"demo", "full", "full_cpu", "full_cpu_decay", "micro", "tokenizers", "encoder"} <= set(names)
    assert not {"stage1", "stage2", "stage3", "stage0_vq"} & set(names)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "full_cpu_decay" in " ".join(capsys.readouterr().out.split())  # --preset's help lists them
    for name in names:
        spec, base = PipelineSpec.load(PRESETS_DIR / f"{name}.yaml")
        for st in [*spec.stage0, *spec.stages, *(s for ab in spec.ablations for s in ab["stages"])]:
            assert (base / st.config).is_file(), (name, st.config)


def test_pipeline_file_mistakes_are_reported_before_any_run(tmp_path):
    """A typo in a later stage was found only after the stages before it had trained (half an hour in)."""
    from lit_janus.shapes.pipeline_spec import PipelineSpec

    stage1 = ROOT / "configs/shapes/stage1.yaml"
    cases = {
        f"stages:\n  - {{name: s, config: {stage1}, max_steps: 1}}\n  - {{name: t, config: stage2_typo.yaml, max_steps: 1}}\n":
            "run 't': stage config .*stage2_typo.yaml not found",
        f"stages:\n  - {{name: s, config: {stage1}, max_step: 1}}\n": "run 's': .*max_step.*a run has: name, config",
        "stages: 3\n": "stage lists are lists of runs",
        "- a\n- b\n": "a pipeline file is a mapping",
        "model: {n_layers: 8}\n": r"model: unknown Config field\(s\) \['n_layers'\]",
        "stages: [\n": "p.yaml is not valid YAML",
    }
    for text, error in cases.items():
        (tmp_path / "p.yaml").write_text("name: x\n" + text if not text.startswith("-") else text)
        with pytest.raises((ValueError, FileNotFoundError), match=error):
            PipelineSpec.load(tmp_path / "p.yaml")


def test_pipeline_refuses_repeated_run_names(tmp_path):
    from lit_janus.shapes.pipeline_spec import PipelineSpec

    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yaml").write_text("")
    (tmp_path / "p.yaml").write_text("name: x\nstages:\n  - {name: stage2, config: a.yaml, max_steps: 1}\n"
                                     "  - {name: stage2, config: b.yaml, max_steps: 1}\n")
    with pytest.raises(ValueError, match=r"run names must be unique .*\['stage2'\]"):
        PipelineSpec.load(tmp_path / "p.yaml")


def test_pipeline_refuses_more_than_one_device(tmp_path):
    """Each run is a `fit` inside the pipeline's process: Lightning would start the other ranks by running
    the pipeline's command again."""
    from lit_janus.shapes.pipeline_spec import PipelineSpec

    stage1 = ROOT / "configs/shapes/stage1.yaml"
    (tmp_path / "p.yaml").write_text(f"name: x\ntrainer: {{devices: 2}}\nstages:\n  - {{name: s, config: {stage1}, max_steps: 1}}\n")
    with pytest.raises(ValueError, match="trains on one device.*command.txt"):
        PipelineSpec.load(tmp_path / "p.yaml")
    (tmp_path / "p1.yaml").write_text(f"name: x\ntrainer: {{devices: 2}}\nstages:\n  - {{name: s, config: {stage1}, "
                                      "max_steps: 1, set: {trainer.devices: 1}}\n")
    PipelineSpec.load(tmp_path / "p1.yaml")  # every run overrides it
    (tmp_path / "p2.yaml").write_text(f"name: x\nstages:\n  - {{name: s, config: {stage1}, max_steps: 1, "
                                      "set: {trainer: {devices: 2}}}\n")
    with pytest.raises(ValueError, match="trains on one device"):
        PipelineSpec.load(tmp_path / "p2.yaml")
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "q.yaml").write_text("name: x\nstages:\n  - {name: s, config: a.yaml, max_steps: 1, "
                                     "set: {trainer.num_nodes: 2}}\n")
    with pytest.raises(ValueError, match="trains on one device"):
        PipelineSpec.load(tmp_path / "q.yaml")
    # a stage config asking for two devices, through the files it stacks on
    (tmp_path / "two.yaml").write_text(f"defaults: [{ROOT / 'configs/shapes/stage1.yaml'}]\ntrainer: {{devices: '0,1'}}\n")
    (tmp_path / "r.yaml").write_text("name: x\nstages:\n  - {name: s, config: two.yaml, max_steps: 1}\n")
    with pytest.raises(ValueError, match="run 's' asks for .*0,1"):
        PipelineSpec.load(tmp_path / "r.yaml")
    # one device named by index is one device
    (tmp_path / "ok.yaml").write_text("name: x\ntrainer: {devices: [0]}\nstages:\n"
                                      f"  - {{name: s, config: {ROOT / 'configs/shapes/stage1.yaml'}, max_steps: 1}}\n")
    PipelineSpec.load(tmp_path / "ok.yaml")


def test_pipeline_checks_the_built_trainer_before_fit(tmp_path):
    """What the files cannot say ("auto", -1: however many the machine has) is checked on the built trainer,
    before `fit` would launch the other processes."""
    import dataclasses

    from lit_janus.shapes.pipeline import Pipeline
    from lit_janus.shapes.pipeline_spec import PipelineSpec

    spec, base = PipelineSpec.load(_micro_spec(tmp_path, stages=False))
    spec = dataclasses.replace(spec, trainer={**spec.trainer, "accelerator": "cpu", "devices": 2})  # as "auto" on 2 GPUs
    pipe = Pipeline(spec, base, tmp_path / "run", log=lambda *a: None)
    with pytest.raises(ValueError, match="trainer has 2 processes"):
        pipe.fit(spec.stage0[0], eval_callback=False, stage0=True)
    assert not (tmp_path / "run" / spec.stage0[0].name / "checkpoints").exists()  # nothing ran


def test_smoke_cuts_every_run_and_exports_nothing():
    """`--smoke`: the GPU presets checked end to end on a laptop (every run, branch and evaluation)."""
    from lit_janus.shapes.pipeline_spec import PRESETS_DIR, PipelineSpec

    full, _ = PipelineSpec.load(PRESETS_DIR / "full.yaml")
    smoke = full.smoke(3)
    runs = [*smoke.stage0, *smoke.stages, *(s for ab in smoke.ablations for s in ab["stages"])]
    assert len(runs) == len([*full.stage0, *full.stages, *(s for ab in full.ablations for s in ab["stages"])])
    assert {s.max_steps for s in runs} == {3} and max(s.eval_every for s in runs) == 3
    assert [s.set for s in smoke.stages] == [s.set for s in full.stages]  # the GPU overrides still apply
    assert smoke.eval["n_per_category"] == 2 and smoke.eval["n_vqa"] == 4 and smoke.trainer == full.trainer
    assert full.stages[1].max_steps > 3  # the preset itself is untouched
    tokenizers, _ = PipelineSpec.load(PRESETS_DIR / "tokenizers.yaml")
    assert tokenizers.export_stage0 and tokenizers.smoke().export_stage0 is None  # never overwrite real weights


def test_stage_configs_parse_with_the_cli(tmp_path):
    """Every ShapesWorld LightningCLI config parses and instantiates (defaults stacking included)."""
    from safetensors.torch import save_file

    from lit_janus.cli import main
    from lit_janus.shapes.assemble import assemble
    from lit_janus.shapes.siglip import SigLIPModule
    from lit_janus.shapes.vq_training import VQModule

    save_file({k: v.contiguous() for k, v in VQModule(overrides=SMALL).vq.state_dict().items()}, str(tmp_path / "vq.safetensors"))
    save_file(SigLIPModule(overrides=SMALL).vision.state_dict(), str(tmp_path / "vision.safetensors"))
    init = assemble(tmp_path / "vq.safetensors", tmp_path / "vision.safetensors", tmp_path / "init", **SMALL)
    common = ["--trainer.logger", "false", "--trainer.callbacks", "[]"]
    for name in ("stage0_vq", "stage0_siglip"):
        cli = main(["--config", str(ROOT / "configs/shapes" / f"{name}.yaml"), *common], run=False)
        assert cli.model.config.image_size == 64
    for name, stage in (("stage1", 1), ("stage2", 2), ("stage3", 3), ("ablation_janus_stage2", 2)):
        cli = main(["--config", str(ROOT / "configs/shapes" / f"{name}.yaml"), "--model.init_args.init_from",
                    str(init), *common], run=False)
        assert cli.model.hparams.stage == stage
    cli = main(["--config", str(ROOT / "configs/shapes/stage2.yaml"), "--config", str(ROOT / "configs/shapes/gpu.yaml"),
                "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.init_args.init_from",
                str(init), *common], run=False)
    assert cli.datamodule.global_batch_size == 256


def _micro_spec(tmp_path, stages=True):
    import yaml

    spec = yaml.safe_load((ROOT / "configs/shapes/micro.yaml").read_text())
    if not stages:
        spec["stages"] = spec["stages"][:1]
        spec["ablations"] = []
        spec["eval_init"] = False
    p = tmp_path / "micro.yaml"
    # stage configs are found next to the pipeline file: point at the real ones
    for st in [*spec["stage0"], *spec["stages"], *(s for ab in spec["ablations"] for s in ab["stages"])]:
        st["config"] = str(ROOT / "configs/shapes" / st["config"])
    p.write_text(yaml.safe_dump(spec))
    return p


def test_pipeline_smoke(tmp_path, capsys):
    """Stage 0a -> 0b -> assemble -> Stage I -> evaluation -> results, at microscopic size."""
    from lit_janus.shapes.pipeline import main

    out = tmp_path / "run"
    result = main(["--config", str(_micro_spec(tmp_path, stages=False)), "--out", str(out)])
    names = [r["name"] for r in result["rows"]]
    assert names == ["ground_truth", "vq_reconstruction", "stage1"]
    assert result["rows"][0]["geneval"]["overall"] == 1.0  # the detector on ground truth
    assert (out / "results.md").is_file() and (out / "samples" / "stage1.png").is_file()
    assert (out / "stage0" / "vq.safetensors").is_file() and (out / "init" / "config.json").is_file()
    assert Path(result["checkpoints"]["stage1"]).is_file()
    assert any((out / "tb" / "stage1").glob("events.out.tfevents*"))

    # the stage's checkpoint scored by the evaluation command, with the failure breakdown
    from lit_janus.shapes import evaluate_model

    capsys.readouterr()
    res = evaluate_model.main([result["checkpoints"]["stage1"], "--n", "3", "--heldout", "2", "--vqa", "0",
                               "--no-ceilings", "--categories", "two_object", "color_attr", "--failures"])
    printed = capsys.readouterr().out
    for split, tag in [("train", "two_object"), ("train", "color_attr"), ("heldout", "color_attr")]:
        line = next(l for l in printed.splitlines() if l.startswith(f"{split} {tag}: "))
        counts = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
        n = 3 if split == "train" else 2
        assert sum(map(int, counts.values())) == n
        # the breakdown reads the same detections the score does
        assert int(counts.get("pass", 0)) / n == pytest.approx((res.geneval if split == "train" else res.heldout)[tag])
    assert set(res.geneval) >= {"two_object", "color_attr", "overall"}

    # retrain only the encoder (stage0_retrain), the VQ tokenizer taken from the first run
    import yaml

    spec = yaml.safe_load(_micro_spec(tmp_path, stages=False).read_text())
    spec.update(stages=[], ablations=[], stage0_reuse=str(out / "stage0"), stage0_retrain=["stage0_siglip"])
    (tmp_path / "encoder.yaml").write_text(yaml.safe_dump(spec))
    again = tmp_path / "again"
    result = main(["--config", str(tmp_path / "encoder.yaml"), "--out", str(again)])
    assert (again / "stage0_siglip").is_dir() and not (again / "stage0_vq").exists()
    assert (again / "stage0" / "vq.safetensors").read_bytes() == (out / "stage0" / "vq.safetensors").read_bytes()
    assert set(json.loads((again / "stage0" / "stage0.json").read_text())["metrics"]) >= {"vq_loss", "siglip_loss"}
    assert result["rows"][0]["geneval"]["overall"] == 1.0
    spec["stage0_retrain"] = ["stage0_clip"]
    (tmp_path / "encoder.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="not stage0 runs"):
        main(["--config", str(tmp_path / "encoder.yaml"), "--out", str(tmp_path / "bad")])


def test_a_stopped_pipeline_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    """Rerunning the same command continues the stopped stage from its last.ckpt (not from step 0, and
    with no stale checkpoint left at the documented path); other settings into the same --out are refused."""
    import yaml
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_janus.shapes import pipeline as P

    spec = yaml.safe_load(_micro_spec(tmp_path, stages=False).read_text())
    spec["stages"][0]["max_steps"] = 5  # not a multiple of checkpoint_every: the end is saved all the same
    spec["checkpoint_every"] = 2
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(spec))
    args = ["--config", str(tmp_path / "resume.yaml"), "--out", str(tmp_path / "run")]
    ckpts = tmp_path / "run" / "stage1" / "checkpoints"

    save = ModelCheckpoint.on_train_batch_end

    def save_then_die(self, trainer, *args, **kwargs):  # stands in for a kill at step 3 of Stage I
        save(self, trainer, *args, **kwargs)
        if trainer.global_step == 3 and Path(self.dirpath) == ckpts:
            raise RuntimeError("stopped")

    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end", save_then_die)
    with pytest.raises(RuntimeError, match="stopped"):
        P.main(args)
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 2  # the periodic checkpoint
    assert "**Incomplete**" in (tmp_path / "run" / "results.md").read_text()  # the table so far says so
    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end", save)

    capsys.readouterr()
    result = P.main(args)
    assert f"stage1: resuming from {ckpts / 'last.ckpt'}" in capsys.readouterr().out
    assert result["complete"] and "Incomplete" not in (tmp_path / "run" / "results.md").read_text()
    assert result["checkpoints"]["stage1"] == str(ckpts / "last.ckpt") and sorted(os.listdir(ckpts)) == ["last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 5  # (Lightning alone: 4)
    assert set(result["stage0"]) >= {"vq_loss", "siglip_loss"}  # finished stage-0 runs keep their metrics

    spec["stages"][0]["max_steps"] = 6
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="holds a run with other settings"):
        P.main(args)


def test_pipeline_end_to_end(tmp_path):
    """All stages, the ablation branch, evaluation after each, at microscopic size (~10 s)."""
    from lit_janus.checkpoint import load_any
    from lit_janus.shapes.pipeline import main

    out = tmp_path / "run"
    result = main(["--config", str(_micro_spec(tmp_path)), "--out", str(out)])
    names = [r["name"] for r in result["rows"]]
    assert names == ["ground_truth", "vq_reconstruction", "init", "stage1", "stage2", "stage3", "ablation_stage3",
                     "shared_stage1"]
    for r in result["rows"][2:]:
        assert set(r["geneval"]) >= {"single_object", "overall"} and r["vqa"] is not None
    model, _ = load_any(result["checkpoints"]["stage3"])
    assert model.config.n_layer == 1 and model.config.und_encoder == "siglip"
    shared, _ = load_any(result["checkpoints"]["shared_stage1"])  # its own init, same seed, VQ for both tasks
    assert shared.config.und_encoder == "vq" and shared.config.n_layer == 1
    start, _ = load_any(str(out / "init_shared_encoder"))
    assert not torch.equal(shared.gen_aligner.fc1.weight, start.gen_aligner.fc1.weight)  # it trained
    assert torch.equal(shared.vq.quant_conv.weight, model.vq.quant_conv.weight)
    assert "| after Stage III |" in (out / "results.md").read_text()

    # the branches alone, into the same --out: the Janus-style branch starts from the main line's stage1
    # checkpoint found there; finished runs end at once, so this only evaluates again
    table = json.loads((out / "results.json").read_text())
    long_run = {"step_ms": 581.0, "period_ms": 597.6, "data_ms": 15.1, "steps": 6394}
    (out / "results.json").write_text(json.dumps({**table, "step_times_ms": {"stage2": long_run}}))
    again = main(["--config", str(_micro_spec(tmp_path)), "--out", str(out), "--only-ablations"])
    assert [r["name"] for r in again["rows"]] == names  # the main line's rows kept from the first run's table
    assert [r["geneval"] for r in again["rows"][3:6]] == [r["geneval"] for r in result["rows"][3:6]]
    assert again["checkpoints"]["stage1"] == str(out / "stage1" / "checkpoints" / "last.ckpt")
    assert again["step_times_ms"]["stage2"] == long_run  # and its step times (micro runs are too short to time)
    # one branch by name: the other branch's row stays in the table, the one run now comes last
    one = main(["--config", str(_micro_spec(tmp_path)), "--out", str(out), "--only-ablations", "--ablation", "janus_stage2"])
    assert [r["name"] for r in one["rows"]] == names[:6] + ["shared_stage1", "ablation_stage3"]
    assert one["rows"][6] == again["rows"][7] and "shared_stage1" not in one["checkpoints"]
    with pytest.raises(SystemExit, match=r"no branch \['shared'\]; its branches are \['janus_stage2', 'shared_encoder'\]"):
        main(["--config", str(_micro_spec(tmp_path)), "--out", str(out), "--ablation", "shared"])
    with pytest.raises(SystemExit) as refused:  # argparse's error: usage and message on stderr, exit code 2
        main(["--config", str(_micro_spec(tmp_path)), "--out", str(out), "--ablation", "shared_encoder", "--no-ablations"])
    assert refused.value.code == 2
    # into a fresh --out it stops before stage 0, naming what is missing
    with pytest.raises(SystemExit, match=r"main line's \['stage1'\]"):
        main(["--config", str(_micro_spec(tmp_path)), "--out", str(tmp_path / "fresh"), "--only-ablations"])
    assert not (tmp_path / "fresh" / "stage0").exists()


def test_oracle_vqa_learns_colour_questions_from_perfect_image_tokens(tmp_path):
    """The ceiling diagnostic trains (a tiny LLM here): colour questions well above the ~1/6 a model
    blind to the image gets, and its command writes the history."""
    from lit_janus.shapes.oracle_vqa import main

    out = tmp_path / "oracle.json"
    history = main(["--types", "color", "--steps", "100", "--n-layer", "2", "--n-embd", "64", "--eval-every", "50",
                    "--n-eval", "100", "--out", str(out)])
    assert [h["step"] for h in history] == [50, 100]
    assert history[-1]["accuracy"]["color"] >= 0.4
    assert history[-1]["loss"] < history[0]["loss"]
    assert json.loads(out.read_text())["history"] == history
    with pytest.raises(ValueError, match="types"):
        main(["--types", "describe", "--steps", "1"])
    # the scratchpad variant runs end to end and scores the written relation and the grounding token
    history = main(["--types", "position", "--scratchpad", "--steps", "2", "--n-layer", "1", "--n-embd", "32",
                    "--eval-every", "2", "--n-eval", "20"])
    assert set(history[-1]["accuracy"]) == {"position", "position_grounding"}


def test_stage0_export_replaces_the_folder_in_one_swap(tmp_path):
    """The committed stage-0 folder gets all three new files or none, and keeps its README."""
    from lit_janus.shapes.pipeline import _replace_files

    dest, new = tmp_path / "stage0", tmp_path / "new"
    dest.mkdir(), new.mkdir()
    for name in ("vq.safetensors", "vision.safetensors", "stage0.json", "README.md"):
        (dest / name).write_text("old")
    for name in ("vq.safetensors", "vision.safetensors", "stage0.json"):
        (new / name).write_text("new")
    _replace_files(dest, sorted(new.iterdir()))
    assert {f.name: f.read_text() for f in dest.iterdir()} == {
        "vq.safetensors": "new", "vision.safetensors": "new", "stage0.json": "new", "README.md": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "stage0"]  # no .tmp / .old left
