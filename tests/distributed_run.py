"""2-process CPU (gloo) run used by test_distributed.py: train, save a checkpoint, resume.

usage: python distributed_run.py PRETRAINED_DIR OUT_DIR [fsdp2|ddp]
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticData  # noqa: E402

from lit_janus.module import JanusModule  # noqa: E402
from lit_janus.strategy import FSDP2Strategy  # noqa: E402


def trainer(out, steps, strategy):
    return L.Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy() if strategy == "fsdp2" else strategy,
                     max_steps=steps, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     gradient_clip_val=1.0, default_root_dir=out)


def main(pretrained: str, out: str, strategy: str = "fsdp2") -> None:
    torch.manual_seed(0)
    ac = strategy == "fsdp2"  # the FSDP config's activation checkpointing, as on GPUs
    m = JanusModule(init_from=pretrained, stage=2, activation_checkpointing=ac)
    t = trainer(out, 2, strategy)
    t.fit(m, SyntheticData(m.processor))
    ckpt = f"{out}/sharded" if strategy == "fsdp2" else f"{out}/last.ckpt"
    t.save_checkpoint(ckpt)
    first = float(t.callback_metrics["train/loss"])
    m2 = JanusModule(init_from=pretrained, stage=2, activation_checkpointing=ac)
    t2 = trainer(out, 3, strategy)
    t2.fit(m2, SyntheticData(m2.processor), ckpt_path=ckpt)
    if t2.global_rank == 0:
        Path(out, "result.json").write_text(json.dumps({
            "world_size": t.world_size, "step_after_resume": t2.global_step, "loss_step2": first,
            "loss_step3": float(t2.callback_metrics["train/loss"]),
            "sharded_params": type(next(m.model.parameters())).__name__,
            "activation_checkpointing": bool(m.model.llm.gradient_checkpointing),
        }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
