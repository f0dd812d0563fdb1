"""Two CPU processes (gloo): FSDP2 (ModelParallelStrategy, tensor parallel off) and DDP."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from lit_janus.checkpoint import load_any

SCRIPT = Path(__file__).parent / "distributed_run.py"


def test_fsdp2_two_process_train_save_resume_export(tmp_path, tiny_hf_dir):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_hf_dir), str(out), "fsdp2"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["sharded_params"] == "DTensor" and result["activation_checkpointing"]
    assert result["step_after_resume"] == 3  # resumed at step 2, ran one more
    assert (out / "sharded" / "meta.pt").is_file() and len(list((out / "sharded").glob("*.distcp"))) == 2
    # the sharded checkpoint gathers into a full model that differs from the start only where trained
    model, proc_ = load_any(out / "sharded")
    start, _ = load_any(tiny_hf_dir)
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)  # stage 2 trains the LLM
    assert torch.equal(model.vq.decoder.conv_out.weight, start.vq.decoder.conv_out.weight)  # VQ frozen
    assert torch.equal(model.vision.post_layernorm.weight, start.vision.post_layernorm.weight)  # SigLIP frozen


def test_fsdp2_bf16_training_tokenises_images_with_a_float32_vq(tmp_path, tiny_hf_dir):
    """Codes are argmins: a VQ gathered in bf16 (the root unit's compute dtype) moved a few percent of the
    on-the-fly training targets away from the float32 codes `extract_codes` and evaluation use. And the
    gather is a collective: a rank whose step holds no images to encode must join it (it crashed under gloo,
    and would hang under NCCL)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "distributed_vq_run.py"), str(tiny_hf_dir),
                           str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["vq_sharded"] and result["codes_equal"] and result["loss"] > 0
    # image and code records may share a step: rank 1, with only codes, still joins rank 0's VQ gather
    assert result["mixed_steps"] == 2


def test_ddp_two_process_train_save_resume(tmp_path, tiny_hf_dir):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_hf_dir), str(out), "ddp"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["step_after_resume"] == 3
    model, _ = load_any(out / "last.ckpt")
    start, _ = load_any(tiny_hf_dir)
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)
    assert torch.equal(model.vq.decoder.conv_out.weight, start.vq.decoder.conv_out.weight)


def test_fsdp2_random_init_draws_like_an_unsharded_model(tmp_path):
    """A from-scratch FSDP2 run starts from transformers' initialisation (N(0, 0.02) weights, unit norms),
    the one `build_model` gives on one device, not torch's reset_parameters (N(0, 1) embeddings)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_janus.checkpoint import build_model
    from lit_janus.config import Config
    from lit_janus.model import JanusPro
    from lit_janus.sharding import materialize_sharded, shard_model

    cfg = Config.from_name("tiny")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with torch.device("meta"):
            model = JanusPro(cfg)
        shard_model(model, init_device_mesh("cpu", (1,)))
        materialize_sharded(model, torch.device("cpu"), lambda: None)
        sharded = {k: v.full_tensor() for k, v in model.janus.state_dict().items()}
    finally:
        dist.destroy_process_group()
    for k, ref in build_model(cfg).janus.state_dict().items():
        a, b = sharded[k].float(), ref.float()
        assert abs(a.mean() - b.mean()) < 0.05 and abs(a.std() - b.std()) <= 0.3 * b.std() + 1e-3, k
