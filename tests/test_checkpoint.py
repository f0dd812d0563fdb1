"""Loading, converting and rejecting checkpoints (transformers layout; DeepSeek's is in test_deepseek_layout.py)."""

import json
import os
import shutil

import pytest
import torch

from lit_janus.checkpoint import CheckpointError, detect_layout, load_any, load_pretrained, save_transformers
from lit_janus.convert import main as convert_main


def _ids(p):
    return torch.tensor([p.t2i_prompt_ids("a red circle")])


@torch.no_grad()
def test_transformers_layout_round_trip(tiny_hf_dir, tiny_model, tiny_processor):
    assert detect_layout(tiny_hf_dir) == "transformers"
    model, proc = load_pretrained(tiny_hf_dir)
    assert proc.image_id == tiny_processor.image_id and proc.pad_id == tiny_processor.pad_id
    assert model.config.asdict() | {"name": ""} == tiny_model.config.asdict() | {"name": ""}
    ids = _ids(proc)
    torch.testing.assert_close(model.janus(input_ids=ids).logits, tiny_model.janus(input_ids=ids).logits, rtol=0, atol=0)
    cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["text_config"]["tie_word_embeddings"] is False


def test_transformers_processor_loads_what_we_write(tiny_hf_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(tiny_hf_dir))
    assert proc.image_token == "<image_placeholder>" and proc.num_image_tokens == 16


def test_convert_cli_reconverts(tmp_path, tiny_hf_dir, tiny_model, tiny_processor):
    dst = tmp_path / "out"
    assert convert_main([str(tiny_hf_dir), str(dst), "--dtype", "bfloat16"]) == 0
    model, _ = load_pretrained(dst)
    assert model.llm.embed_tokens.weight.dtype == torch.float32  # loaded as float32 by default
    ref = tiny_model.llm.embed_tokens.weight.to(torch.bfloat16).float()
    assert torch.equal(model.llm.embed_tokens.weight, ref)
    assert not (tmp_path / "out.tmp").exists()


def _copy(src, tmp_path, name="ck"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_a_missing_checkpoint_says_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: runs/shapes/init \(relative to the working"):
        load_any("runs/shapes/init")


def test_neither_layout(tmp_path, tiny_hf_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    d = _copy(tiny_hf_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        load_pretrained(d)
    with pytest.raises(CheckpointError, match="neither a pretrained directory"):
        load_any(tmp_path / "empty")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x04 a pickle, or anything but torch.save's zip")
    with pytest.raises(CheckpointError, match="garbage.ckpt is not a Lightning checkpoint"):
        load_any(tmp_path / "garbage.ckpt")
    with pytest.raises(CheckpointError, match="pass its directory"):
        load_any(next(d.glob("*.safetensors")))


def test_no_tokenizer(tmp_path, tiny_hf_dir):
    d = _copy(tiny_hf_dir, tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_pretrained(d)


def test_missing_shard_and_corrupt_file(tmp_path, tiny_hf_dir):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_hf_dir, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    keys = sorted(sd)
    half = len(keys) // 2
    save_file({k: sd[k] for k in keys[:half]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[half:]}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(keys)}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    model, _ = load_pretrained(d)  # sharded loads
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_pretrained(d)
    (d / "model-00002-of-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weight file .*model-00002"):
        load_pretrained(d)


def test_mismatched_keys_shapes_dtypes_and_non_finite_weights_are_refused(tmp_path, tiny_hf_dir):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_hf_dir, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["model.generation_head.vision_head.weight"] = torch.zeros(3, 3)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.generation_head.vision_head.weight: checkpoint \(3, 3\)"):
        load_pretrained(d)
    sd = load_file(str(tiny_hf_dir / "model.safetensors"))
    sd["model.extra.weight"] = torch.zeros(1)
    del sd["model.aligner.fc1.bias"]
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\) \['model.aligner.fc1.bias'\].*model.extra.weight"):
        load_pretrained(d)
    sd = load_file(str(tiny_hf_dir / "model.safetensors"))  # integer weights of the right shape (quantised?)
    sd["model.aligner.fc1.weight"] = sd["model.aligner.fc1.weight"].to(torch.int32)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) that are not floating point.*model.aligner.fc1.weight "
                                              r"\(torch.int32\)"):
        load_pretrained(d)
    sd = load_file(str(tiny_hf_dir / "model.safetensors"))  # a diverged run's weights
    sd["model.language_model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    sd["lm_head.weight"][1, 2] = float("inf")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 2 tensor\(s\): .*lm_head.weight"):
        load_pretrained(d)


def test_bin_checkpoints_load_with_weights_only(tmp_path, tiny_hf_dir, tiny_model):
    """A pickle holding anything but tensors is refused (weights_only=True), never executed."""
    from safetensors.torch import load_file

    d = _copy(tiny_hf_dir, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    model, _ = load_pretrained(d)
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weight file .*holds a pickled print, .*without running pickled code") as e:
        load_pretrained(d)
    assert "weights_only=False" not in str(e.value) and "\x1b" not in str(e.value)  # torch's advice: never here


def test_save_is_atomic(tmp_path, tiny_model, tiny_processor, monkeypatch):
    dst = tmp_path / "out"
    save_transformers(tiny_model, tiny_processor, dst)
    before = sorted(p.name for p in dst.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tiny_processor.tokenizer), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_transformers(tiny_model, tiny_processor, dst)
    assert sorted(p.name for p in dst.iterdir()) == before  # the previous export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and no half-written sibling is left


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_exported_weights_are_as_readable_as_the_rest_of_the_export(tmp_path, tiny_model, tiny_processor):
    # safetensors 0.8 writes its files 0600 (safetensors#782): a colleague could read config.json but not
    # the weights of an export on a shared disk
    old = os.umask(0o022)
    try:
        out = save_transformers(tiny_model, tiny_processor, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


def test_save_never_replaces_a_foreign_folder_nor_casts_the_callers_model(tmp_path, tiny_model, tiny_processor):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a transformers Janus checkpoint"):
        save_transformers(tiny_model, tiny_processor, tmp_path / "exports")
    assert (tmp_path / "exports" / "notes.txt").read_text() == "mine"

    save_transformers(tiny_model, tiny_processor, tmp_path / "bf16", dtype=torch.bfloat16)
    assert tiny_model.llm.embed_tokens.weight.dtype == torch.float32  # the caller's model is unchanged
    assert tiny_model.llm.rotary_emb.inv_freq.dtype == torch.float32
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    text = cfg["text_config"]  # the tokenizer's ids, not LlamaConfig's placeholders
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (
        tiny_processor.bos_id, tiny_processor.eos_id, tiny_processor.pad_id)


def test_sharded_checkpoint_reads_only_the_weights_and_never_runs_its_metadata(tmp_path, tiny_model, tiny_processor):
    """Lightning's FSDP2 checkpoints are DCP directories: `state_dict` and `optimizer_0` entries, a pickled
    `.metadata`, and `meta.pt`. Only the weights are read, and `.metadata` may name DCP records only."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from lit_janus.checkpoint import lightning_metadata

    sd = {"model.janus." + k: v for k, v in tiny_model.janus.state_dict().items()}
    optim = {"state": {k: {"exp_avg": torch.ones_like(v)} for k, v in sd.items()}}
    d = tmp_path / "sharded"
    dcp.save({"state_dict": sd, "optimizer_0": optim}, checkpoint_id=str(d), no_dist=True)
    torch.save({"lit_janus": lightning_metadata(tiny_model.config, tiny_processor)}, d / "meta.pt")
    reads = []
    real_load = torch.load
    # every tensor DCP reads passes through torch.load: count them (optimizer entries must not be among them)
    torch.load = lambda *a, **k: reads.append(1) or real_load(*a, **k)
    try:
        model, _ = load_any(d)
    finally:
        torch.load = real_load
    assert all(torch.equal(v, tiny_model.janus.state_dict()[k]) for k, v in model.janus.state_dict().items())
    assert len(reads) == 1 + len(sd)  # meta.pt, then one read per model tensor

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=r"names builtins.print.*refusing to unpickle"):
        load_any(d)


def test_bad_json_and_incomplete_configs_name_the_problem(tmp_path, tiny_hf_dir):
    d = _copy(tiny_hf_dir, tmp_path)
    (d / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="cannot read .*preprocessor_config.json: JSONDecodeError"):
        load_pretrained(d)
    shutil.copy(tiny_hf_dir / "preprocessor_config.json", d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["vq_config"]["num_embeddings"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks the field 'num_embeddings'"):
        load_pretrained(d)


@pytest.mark.parametrize("processor_config, expected", [
    ({"use_default_system_prompt": False}, ""), ({"use_default_system_prompt": True}, "default"),
    ({"system_prompt": "Be brief.", "use_default_system_prompt": False}, "Be brief."), (None, "default")])
def test_system_prompt_follows_the_processor_config(tmp_path, tiny_hf_dir, processor_config, expected):
    from lit_janus.processor import DEFAULT_SYSTEM_PROMPT

    d = _copy(tiny_hf_dir, tmp_path)
    if processor_config is None:
        (d / "processor_config.json").unlink()  # DeepSeek's VLChatProcessor default
    else:
        (d / "processor_config.json").write_text(json.dumps({"processor_class": "JanusProcessor",
                                                             "num_image_tokens": 16} | processor_config))
    _, proc = load_pretrained(d)
    assert proc.system_prompt == (DEFAULT_SYSTEM_PROMPT if expected == "default" else expected)


def test_low_precision_models_keep_float32_rope(tiny_config, tiny_hf_dir):
    """A bf16 model computes RoPE angles from float32 frequencies (bf16 ones are off by ~0.4%: about
    a radian at position 600), whether built at random or loaded, as transformers' from_pretrained."""
    from lit_janus.checkpoint import build_model

    for model in (build_model(tiny_config, dtype=torch.bfloat16), load_any(tiny_hf_dir, dtype=torch.bfloat16)[0]):
        assert model.llm.embed_tokens.weight.dtype == torch.bfloat16
        assert model.llm.rotary_emb.inv_freq.dtype == torch.float32


def test_lightning_checkpoints_keep_their_context_length(tmp_path, tiny_hf_dir, tiny_model, tiny_processor):
    """A Lightning checkpoint records the processor's max_length (512 here); loading it for predict or
    init_from keeps that context unless told otherwise. Pretrained directories record none: 4096."""
    from lit_janus.checkpoint import lightning_metadata, read_config_and_processor

    path = tmp_path / "last.ckpt"
    sd = {"model.janus." + k: v for k, v in tiny_model.janus.state_dict().items()}
    torch.save({"state_dict": sd, "lit_janus": lightning_metadata(tiny_model.config, tiny_processor)}, path)
    assert tiny_processor.max_length == 512
    assert load_any(path)[1].max_length == 512
    assert read_config_and_processor(path)[1].max_length == 512
    assert load_any(path, max_length=300)[1].max_length == 300
    assert load_any(tiny_hf_dir)[1].max_length == 4096


def test_the_slurm_script_restores_a_save_killed_between_its_renames(tmp_path):
    """scripts/slurm_fit.sh restores `last.ckpt` in one process before `srun` starts the ranks: run its
    Python line on the files a save killed between `replace_dir`'s two renames leaves behind."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = (Path(__file__).parents[1] / "scripts" / "slurm_fit.sh").read_text()
    code = re.search(r'^python -c "(.*)" "\$LAST"$', script, re.M).group(1)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt.old").write_text("step 2")
    (ckpts / ".last.ckpt.partial").write_text("step 3")
    subprocess.run([sys.executable, "-c", code, str(ckpts / "last.ckpt")], check=True)
    assert (ckpts / "last.ckpt").read_text() == "step 3"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
