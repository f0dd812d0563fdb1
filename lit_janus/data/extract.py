"""Pre-extract VQ codes for the text-to-image images of a manifest (or class folder), once, so that
training reads 576 small integers per image instead of decoding and VQ-encoding every image on
every epoch.

    python main.py predict --config configs/predict/extract_codes.yaml \\
        --model.init_args.checkpoint CKPT_DIR --data.init_args.source.init_args.path data/t2i.jsonl \\
        --trainer.callbacks.init_args.output_dir data/t2i_codes

writes `OUT/codes.npy` (one [N, tokens] array, row i = record i, -1 where the image was unreadable)
and `OUT/manifest.jsonl` with `{"codes": "codes.npy", "codes_row": i, "caption": ...}` lines for
every record that got codes, ready to be a `JsonlSource` of the t2i stream. Runs on any number of
GPUs with DDP (each rank writes its own rows of the memory-mapped array). A killed extraction resumes:
rerun the same command and only the rows still missing are read (`OUT/extract.json` records the
checkpoint and the source, so a rerun with another one stops instead of mixing codes).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from lit_janus.data.sources import Source
from lit_janus.processor import generation_pixels, load_rgb

log = logging.getLogger(__name__)


class ImageRecords(Dataset):
    """`{"index", "pixels"}` for each record of a source, or of the records `indices` (pixels None
    when the image is unreadable)."""

    def __init__(self, source: Source, image_size: int, indices: np.ndarray | None = None):
        self.source, self.image_size, self.indices = source, image_size, indices

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index = k if self.indices is None else int(self.indices[k])
        try:
            pixels = generation_pixels(load_rgb(self.source[index]["image"]), self.image_size)
        except (OSError, ValueError, KeyError) as e:
            log.warning("no codes for %s: %s", self.source.locate(index), e)
            pixels = None
        return {"index": index, "pixels": pixels}


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    ok = [x for x in items if x["pixels"] is not None]
    return {"index": torch.tensor([x["index"] for x in ok], dtype=torch.long),
            "pixels": torch.stack([x["pixels"] for x in ok]) if ok else torch.empty(0)}


class ExtractionData(L.LightningDataModule):
    """The images of a source, preprocessed for the VQ tokenizer (short side, centre crop, [-1, 1])."""

    def __init__(self, source: Source, image_size: int | None = None, batch_size: int = 32, num_workers: int = 4):
        """
        Args:
            source: records with an `image` (a `JsonlSource` t2i manifest or a `ClassFolderSource`).
            image_size: the VQ input side; default: the checkpoint's image size (384 for Janus-Pro).
            batch_size: images per device and step.
            num_workers: DataLoader workers for image decoding.
        """
        super().__init__()
        self.source, self.image_size, self.batch_size, self.num_workers = source, image_size, batch_size, num_workers
        self.todo: np.ndarray | None = None  # record indices still without codes (set by CodeWriter on a resume)

    def predict_dataloader(self) -> DataLoader:
        # configure_model has run: the extractor knows its checkpoint's image size
        model_size = getattr(self.trainer.lightning_module, "image_size", None) if self.trainer else None
        size = self.image_size or model_size
        if size is None:
            raise ValueError("set data.init_args.image_size (the VQ input side of the checkpoint)")
        if model_size is not None and size != model_size:
            raise ValueError(f"data.init_args.image_size is {size} but the checkpoint's VQ takes {model_size} px "
                             f"images: set it to {model_size} or leave it unset")
        return DataLoader(ImageRecords(self.source, size, self.todo), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_images)


class CodeExtractor(L.LightningModule):
    """The frozen VQ tokenizer of a checkpoint, as a predict-only LightningModule."""

    def __init__(self, checkpoint: str):
        """
        Args:
            checkpoint: a pretrained directory (DeepSeek's or transformers' layout) or a Lightning
                checkpoint (file or sharded directory) of this project.
        """
        super().__init__()
        self.checkpoint = checkpoint
        self.vq: torch.nn.Module | None = None
        self.codebook_size = self.num_image_tokens = self.image_size = None

    def configure_model(self) -> None:
        if self.vq is not None:
            return
        from lit_janus.checkpoint import load_any

        model, _ = load_any(self.checkpoint)
        # keep only the VQ tokenizer: the LLM and SigLIP are not needed to make codes
        self.vq = model.vq.eval().requires_grad_(False)
        self.codebook_size, self.num_image_tokens = model.config.codebook_size, model.config.num_image_tokens
        self.image_size = model.config.image_size

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        from lit_janus.vq import vq_encode

        if batch["index"].numel() == 0:
            return {"index": batch["index"].cpu(), "codes": torch.empty(0, self.num_image_tokens, dtype=torch.long)}
        return {"index": batch["index"].cpu(), "codes": vq_encode(self.vq, batch["pixels"]).cpu()}


def _filled_rows(codes: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Rows with every code written, read in chunks (ImageNet's array is 1.5 GB)."""
    return np.concatenate([(codes[i : i + chunk] >= 0).all(1) for i in range(0, len(codes), chunk)] or [[]]).astype(bool)


def _relative_to(path: str, folder: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), folder.resolve())
    except ValueError:  # another drive (Windows): no relative path
        return str(Path(path).resolve())


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


class CodeWriter(BasePredictionWriter):
    """Writes `codes.npy` ([N, tokens], row = record index, -1 = no codes) and `manifest.jsonl`, and
    resumes an extraction that was stopped: rows already filled are kept and their images not read."""

    def __init__(self, output_dir: str):
        """
        Args:
            output_dir: where `codes.npy`, `manifest.jsonl` and `extract.json` go.
        """
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self._codes: np.ndarray | None = None
        self._resume = False

    @property
    def codes_path(self) -> Path:
        return self.output_dir / "codes.npy"

    def _run_settings(self, pl_module, data: ExtractionData) -> dict:
        from lit_janus.predict.generator import checkpoint_fingerprint

        source = data.source
        where = getattr(source, "path", None) or getattr(source, "root", None) or type(source).__name__
        return {"checkpoint": str(pl_module.checkpoint), "checkpoint_fingerprint": checkpoint_fingerprint(
                pl_module.checkpoint), "source": str(where), "records": len(source)}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before the data loader exists: on a rerun, find the rows still to do (all ranks agree)."""
        from lit_janus.predict.writers import record_run, run_changes

        data = trainer.datamodule
        if not isinstance(data, ExtractionData):
            raise TypeError("CodeWriter needs the ExtractionData datamodule")
        settings = self._run_settings(pl_module, data)
        run_file = self.output_dir / "extract.json"
        self._resume = self.codes_path.is_file()
        trainer.strategy.barrier("extraction: codes.npy looked for")  # before rank 0 can create it
        if self._resume:
            changed = run_changes(run_file, settings)
            if changed:
                raise ValueError(f"{self.output_dir} holds the codes of another extraction ({'; '.join(changed)}): "
                                 "write to another output_dir or delete that folder")
            codes = np.load(self.codes_path, mmap_mode="r")
            done = _filled_rows(codes)  # a row killed half-way through its copy is redone
            data.todo = np.flatnonzero(~done)
            if trainer.is_global_zero:
                log.warning("resuming the extraction in %s: %d of %d records have codes, %d to do",
                            self.output_dir, int(done.sum()), len(done), len(data.todo))
        elif trainer.is_global_zero:
            record_run(run_file, settings)

    def on_predict_start(self, trainer, pl_module) -> None:
        n, tokens = len(trainer.datamodule.source), pl_module.num_image_tokens
        dtype = np.int16 if pl_module.codebook_size <= np.iinfo(np.int16).max else np.int32
        if self._resume:
            codes = np.load(self.codes_path, mmap_mode="r")
            if codes.shape != (n, tokens) or codes.dtype != dtype:
                raise ValueError(f"{self.codes_path} is {codes.dtype} {codes.shape}, not {np.dtype(dtype)} {(n, tokens)}: "
                                 "delete it to extract again")
        elif trainer.is_global_zero:  # one array for all ranks; each fills its own rows
            tmp = self.codes_path.with_name(".codes.npy.tmp")
            codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, tokens))
            codes[:] = -1
            codes.flush()
            del codes
            tmp.replace(self.codes_path)
        trainer.strategy.barrier("codes.npy created")
        self._codes = np.load(self.codes_path, mmap_mode="r+")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        index = prediction["index"].numpy()
        if len(index):
            self._codes[index] = prediction["codes"].numpy().astype(self._codes.dtype)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._codes.flush()
        trainer.strategy.barrier("codes written")
        if trainer.is_global_zero:
            from lit_janus.predict.writers import atomic_write

            source = trainer.datamodule.source
            done = _filled_rows(self._codes)
            lines = []
            for i in np.flatnonzero(done):
                record = {k: v for k, v in source[int(i)].items() if _jsonable(v)}
                if isinstance(record.get("image"), str):  # manifests resolve paths against their own folder
                    record["image"] = _relative_to(record["image"], self.output_dir)
                record.update(codes="codes.npy", codes_row=int(i))
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            atomic_write(self.output_dir / "manifest.jsonl", lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))
            print(f"extracted codes for {int(done.sum())} of {len(done)} images into {self.output_dir} "
                  f"({int((~done).sum())} unreadable, skipped)")
        self._codes = None
