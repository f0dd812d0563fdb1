"""Prediction writers: PNGs, grids and `metadata.jsonl` (or GenEval's folder layout), answers as JSONL,
`errors.jsonl` for bad items; atomic files and a resume that only ever continues the same run."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_janus.predict.inputs import clip_text, split_lines

log = logging.getLogger(__name__)


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: a killed run never leaves a half-written file under
    the final name (the temp name starts with '.' so scorers globbing for `\\d+.png` skip it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # unique on a shared disk too
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_changes(path: Path, settings: dict) -> list[str]:
    """`key: old -> new` for each setting that differs from the run recorded in `path` (a JSON file written
    by `record_run`; missing or unreadable: every setting differs)."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    return [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]


def record_run(path: Path, settings: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))


def save_png(image: torch.Tensor, path: Path) -> None:
    """uint8 [H, W, 3] -> PNG, atomically."""
    from PIL import Image

    im = Image.fromarray(image.numpy())
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def image_grid(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> one uint8 [rows*(H+pad)-pad, cols*(W+pad)-pad, 3] grid, near-square."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = images[i]
    return grid


def _append_jsonl(path: Path, records: list[dict]) -> None:
    """One write of whole lines, flushed and synced: a crash loses at most the line being written,
    which `_repair_jsonl` drops on the next start."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _repair_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSONL file; a trailing partial line (a killed write) is cut off."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        atomic_write(path, lambda tmp: tmp.write_bytes(raw))
    out = []
    for line in split_lines(raw.decode("utf-8")):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class _Writer(BasePredictionWriter):
    """Shared by the writers: output folder, errors.jsonl, resume bookkeeping.

    A rerun into the same folder resumes, and only resumes: the folder's `run.json` records the
    checkpoint and sampling settings, and each written item its prompt (question), so a run with
    another checkpoint, other settings or another input file stops with an error instead of
    skipping items that a different model or prompt produced."""

    IDENTITY = ("prompt",)  # the item fields a written record must match to count as this item

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file: name a directory (new or of this run)")
        self.done: dict[int, dict] = {}
        self.counts = {"written": 0, "skipped": 0, "failed": 0}

    @property
    def errors_path(self) -> Path:
        return self.output_dir / "errors.jsonl"

    @property
    def run_path(self) -> Path:
        return self.output_dir / "run.json"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            self.done = self._written()
            # JanusGenerator says what decides its outputs; another module: nothing to check
            self._check_run(pl_module.run_settings() if hasattr(pl_module, "run_settings") else None)
            # failed items are retried on a rerun and re-recorded if they fail again
            self.errors_path.unlink(missing_ok=True)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:  # after rank 0's repairs
            self.done = self._written()
        # datamodule.setup ran before this hook: a changed input file fails here, before any work
        self._check_items(getattr(trainer.datamodule, "items", None) or [])

    def _check_run(self, settings: dict | None) -> None:
        """Rank 0, after `done` is read: refuse to resume into a folder another checkpoint or other
        settings wrote. A run.json with no finished item beside it (a run that failed before its
        first output, e.g. on a wrong checkpoint path) holds nothing to protect: it is replaced."""
        if settings is None:
            return
        if self.run_path.is_file() and self.done:
            changed = run_changes(self.run_path, settings)
            if changed:
                raise ValueError(
                    f"{self.output_dir} holds the outputs of another predict run ({self.run_path}: "
                    + "; ".join(changed) + "). A rerun only resumes the same run: write to another output_dir "
                    "(--trainer.callbacks.init_args.output_dir) or delete that folder.")
            return
        if self.done:
            log.warning("%s has outputs but no run.json (an older version wrote it): cannot check they come "
                        "from this checkpoint and these settings; resuming, and recording them now", self.output_dir)
        record_run(self.run_path, settings)

    def _identity(self, record: dict) -> tuple:
        return tuple(record.get(k) for k in self.IDENTITY)

    def _check_items(self, items: list[dict]) -> None:
        wrong = [(it["index"], self.done[it["index"]], self._identity(it)) for it in items
                 if "error" not in it and it.get("index") in self.done
                 and self.done[it["index"]] != self._identity(it)]
        if wrong:
            shown = "; ".join(f"item {i}: written for {clip_text(str(a), 80)}, now {clip_text(str(b), 80)}"
                              for i, a, b in wrong[:3])
            raise ValueError(
                f"{len(wrong)} item(s) already written in {self.output_dir} came from a different input: {shown}. "
                "A rerun only resumes the same input file: write to another output_dir or delete that folder.")

    def _prepare(self) -> None:
        """Rank 0, before anything is written (repair files a killed run left)."""

    def _written(self) -> dict[int, tuple]:
        """index -> identity (`IDENTITY` fields) of every item a previous run finished."""
        raise NotImplementedError

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        # mark items a previous run already wrote; the model skips them
        self._check_items(batch)
        for item in batch:
            if item.get("index") in self.done:
                item["done"] = True

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        errors = []
        for r in prediction:
            if r.get("skipped"):
                self.counts["skipped"] += 1
            elif "error" in r:
                self.counts["failed"] += 1
                log.warning("item %s failed: %s", r.get("index"), r["error"])
                errors.append({k: clip_text(v) for k, v in r.items()
                               if k in ("index", "prompt", "question", "image", "id", "error")})
            else:
                self._write(r)
                self.done[r["index"]] = self._identity(r)
                self.counts["written"] += 1
        _append_jsonl(self.errors_path, errors)

    def _write(self, result: dict) -> None:
        raise NotImplementedError

    def on_predict_end(self, trainer, pl_module) -> None:
        c = self.counts
        msg = (f"rank {trainer.global_rank}: wrote {c['written']} item(s) to {self.output_dir}, skipped "
               f"{c['skipped']} already written")
        if c["failed"]:
            msg += f", {c['failed']} failed (see {self.errors_path})"
        log.warning(msg) if c["failed"] else log.info(msg)
        # a run in which every item failed (e.g. a questions file given to t2i.yaml) must not exit 0
        counts = torch.tensor([c["written"] + c["skipped"], c["failed"]], device=pl_module.device)
        total = trainer.strategy.reduce(counts, reduce_op="sum")
        if int(total[1]) and not int(total[0]):
            raise ValueError(f"no item could be produced: all {int(total[1])} failed (the reasons are in "
                             f"{self.errors_path})")


class ImageWriter(_Writer):
    """Writes text-to-image predictions.

    `default` layout: `images/<index:05d>_<j:02d>.png`, `grids/<index:05d>.png` and one
    `metadata.jsonl` line per image (index, prompt, seed, image_index, n_images, cfg_weight, temperature,
    top_k, top_p, file, grid, and the item's own metadata). `geneval` layout, what GenEval's
    `evaluate_images.py` reads: `<index:05d>/metadata.jsonl` (the prompt's GenEval record, one
    JSON object), `<index:05d>/samples/<j:04d>.png`, `<index:05d>/grid.png`.

    Args:
        output_dir: where to write.
        layout: `default` or `geneval`.
        grid: also write a grid of each prompt's images.
    """

    def __init__(self, output_dir: str, layout: Literal["default", "geneval"] = "default", grid: bool = True):
        super().__init__(output_dir)
        self.layout, self.grid = layout, grid

    def _prepare(self) -> None:
        if self.layout != "default":
            return
        # one append writes all of a prompt's lines; a crash (power loss) can still keep only some of them.
        # Such a prompt is not done: drop its lines, so that its rerun does not add a second copy.
        path = self.output_dir / "metadata.jsonl"
        records = _repair_jsonl(path)
        written: dict = {}
        for r in records:
            written.setdefault(r.get("index"), set()).add(r.get("image_index"))
        # (n_images is absent from files written before it was recorded: those lines are kept)
        kept = [r for r in records if r.get("n_images") in (None, len(written[r.get("index")]))]
        if len(kept) != len(records):
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            atomic_write(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))

    def _written(self) -> dict[int, tuple]:
        if self.layout == "geneval":
            done = {}
            for d in self.output_dir.iterdir():
                if d.is_dir() and d.name.isdigit() and (d / "metadata.jsonl").is_file():
                    try:
                        done[int(d.name)] = self._identity(json.loads((d / "metadata.jsonl").read_text()))
                    except ValueError:  # not ours (written atomically): let the item run again
                        continue
            return done
        return {int(r["index"]): self._identity(r) for r in _repair_jsonl(self.output_dir / "metadata.jsonl")
                if "index" in r}

    def _write(self, r: dict) -> None:
        images, index = r["images"], int(r["index"])
        if self.layout == "geneval":
            folder = self.output_dir / f"{index:05d}"
            for j, im in enumerate(images):
                save_png(im, folder / "samples" / f"{j:04d}.png")
            if self.grid:
                save_png(image_grid(images), folder / "grid.png")
            meta = r.get("metadata") or {"prompt": r["prompt"]}
            # written last: its presence marks the prompt as done
            atomic_write(folder / "metadata.jsonl", lambda tmp: tmp.write_text(json.dumps(meta) + "\n"))
            return
        grid_file = f"grids/{index:05d}.png" if self.grid else None
        for j, im in enumerate(images):
            save_png(im, self.output_dir / "images" / f"{index:05d}_{j:02d}.png")
        if grid_file:
            save_png(image_grid(images), self.output_dir / grid_file)
        common = {k: r[k] for k in ("prompt", "seed", "cfg_weight", "temperature", "top_k", "top_p")}
        lines = [{"index": index, "image_index": j, "n_images": len(images), **common,
                  "file": f"images/{index:05d}_{j:02d}.png",
                  "grid": grid_file} | ({"metadata": r["metadata"]} if "metadata" in r else {})
                 for j in range(len(images))]
        _append_jsonl(self.output_dir / "metadata.jsonl", lines)


class AnswerWriter(_Writer):
    """Writes understanding predictions to `<output_dir>/<filename>`, one JSON line per question:
    index, id and metadata (if given), image, question, answer, answer_tokens, temperature, top_k, top_p."""

    def __init__(self, output_dir: str, filename: str = "answers.jsonl"):
        super().__init__(output_dir)
        self.filename = filename

    def _prepare(self) -> None:
        _repair_jsonl(self.output_dir / self.filename)

    IDENTITY = ("question", "image")

    def _identity(self, record: dict) -> tuple:
        # the image by file name: the same input folder moved elsewhere is still the same input
        image = record.get("image")
        names = [Path(x).name for x in image] if isinstance(image, list) else Path(image).name if image else None
        return record.get("question"), names

    def _written(self) -> dict[int, tuple]:
        return {int(r["index"]): self._identity(r) for r in _repair_jsonl(self.output_dir / self.filename)
                if "index" in r}

    def _write(self, r: dict) -> None:
        keys = ("index", "id", "image", "question", "answer", "answer_tokens", "temperature", "top_k", "top_p",
                "metadata")
        _append_jsonl(self.output_dir / self.filename, [{k: r[k] for k in keys if k in r}])


__all__ = ["AnswerWriter", "ImageWriter", "image_grid", "save_png"]
