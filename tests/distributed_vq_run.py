"""2-process CPU (gloo) FSDP2 + bf16-mixed run used by test_distributed.py: the frozen VQ encodes in float32
(its own FSDP unit), so on-the-fly codes equal a single process's float32 codes; a fit on pixels runs; and
a fit where only rank 0's steps hold images to encode (rank 1's t2i samples have pre-extracted codes) runs.

usage: python distributed_vq_run.py PRETRAINED_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import FixedBatches, SyntheticData  # noqa: E402

from lit_janus.checkpoint import load_any  # noqa: E402
from lit_janus.module import JanusModule  # noqa: E402
from lit_janus.strategy import FSDP2Strategy  # noqa: E402


class Encodes(JanusModule):
    def on_fit_start(self):
        self.pixels = torch.rand(4, 3, self.config.image_size, self.config.image_size,
                                 generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a bf16-mixed training step
            self.codes = self.model.encode_images(self.pixels)


class ImagesOnRankZero(SyntheticData):
    """Rank 0's t2i samples are images (VQ-encoded in the step), rank 1's pre-extracted codes: the VQ's
    gather is a collective, so rank 1 must join it although it has nothing to encode."""

    def __init__(self, processor):
        super().__init__(processor)
        self.processor = processor

    def train_dataloader(self):
        self.ds = FixedBatches(self.processor, 8, 64, pixels=self.trainer.global_rank == 0)
        return super().train_dataloader()


def main(pretrained: str, out: str) -> None:
    m = Encodes(init_from=pretrained, stage=2)
    t = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy(), precision="bf16-mixed", max_steps=2,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  gradient_clip_val=1.0, default_root_dir=out)
    t.fit(m, SyntheticData(m.processor, pixels=True))  # pixels: the VQ tokenises every step's t2i targets
    mixed = JanusModule(init_from=pretrained, stage=2)
    t2 = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy(), max_steps=2, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t2.fit(mixed, ImagesOnRankZero(mixed.processor))
    if t.global_rank == 0:
        reference = load_any(pretrained)[0].encode_images(m.pixels)  # one process, float32
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "result.json").write_text(json.dumps({
            "codes_equal": torch.equal(reference, m.codes), "loss": float(t.callback_metrics["train/loss"]),
            "mixed_steps": t2.global_step,
            "vq_sharded": type(next(m.model.vq.parameters())).__name__ == "DTensor"}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
