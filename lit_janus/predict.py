"""`python main.py predict`: images from prompts and answers about images, from any checkpoint.

    python main.py predict --config configs/predict/t2i.yaml \\
        --model.init_args.checkpoint PATH --data.init_args.path prompts.txt
    python main.py predict --config configs/predict/geneval.yaml --model.init_args.checkpoint PATH
    python main.py predict --config configs/predict/understand.yaml \\
        --model.init_args.checkpoint PATH --data.init_args.path questions.jsonl

- `JanusGenerator` (LightningModule) loads the checkpoint in `configure_model` (a pretrained
  directory in DeepSeek's or transformers' layout, a Lightning `.ckpt`, or a sharded checkpoint)
  and samples with the fast `StaticDecoder`.
- `PromptData` (LightningDataModule) reads a .txt of prompts (one per line), a JSONL of
  {"prompt", optional "seed", "n", "metadata"}, GenEval's `evaluation_metadata.jsonl`, or a JSONL of
  {"image", "question", optional "id", "seed"} (image paths relative to the JSONL's folder).
- `ImageWriter` / `AnswerWriter` (prediction writers) write one PNG per image, a grid per prompt
  and `metadata.jsonl`, or GenEval's `<index:05d>/{metadata.jsonl,samples/<n:04d>.png}` layout, or
  `answers.jsonl`.

Bad items (empty prompt, prompt too long for the context, missing or unreadable image, invalid
JSON line) are recorded in `<output_dir>/errors.jsonl` while the others are produced
(`fail_fast: true` stops at the first instead). Files are written atomically (temp + rename) and
an item counts as written once its metadata line is; a rerun into the same directory skips those,
so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from lit_janus.generate import StaticDecoder, decode_images, question_embeds, seed_key

log = logging.getLogger(__name__)

# what a bad *item* can raise (PromptTooLongError is a ValueError); anything else is a real failure
ITEM_ERRORS = (ValueError, OSError)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def read_items(path: str | Path, format: str = "auto") -> tuple[str, list[dict]]:
    """(format, items) of a prompts / GenEval / image-question file. Every item has an `index` (its
    line number, which names its outputs); an unparsable line becomes an item with an `error`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    lines = p.read_text(encoding="utf-8").splitlines()
    if format == "auto":
        format = "prompts" if p.suffix.lower() == ".txt" else _sniff(lines)
    if p.suffix.lower() == ".txt" and format == "prompts":
        return format, [{"index": i, "prompt": line.strip()} for i, line in enumerate(lines)]
    items = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            items.append({"index": i, "error": f"{p.name} line {i + 1}: invalid JSON ({e})"})
            continue
        if format == "geneval":
            items.append({"index": i, "prompt": str(obj.get("prompt", "")), "metadata": obj})
        elif format == "vqa":
            item = {"index": i, "question": str(obj.get("question", "")), "image": obj.get("image")}
            if item["image"] is not None and not Path(item["image"]).is_absolute():
                item["image"] = str(p.parent / item["image"])
            items.append(item | {k: obj[k] for k in ("id", "seed") if k in obj})
        else:
            items.append({"index": i, "prompt": str(obj.get("prompt", ""))}
                         | {k: obj[k] for k in ("seed", "n", "metadata") if k in obj})
    return format, items


def _sniff(lines: list[str]) -> str:
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if "question" in obj:
                return "vqa"
            if "tag" in obj and "include" in obj:
                return "geneval"
            return "prompts"
    return "prompts"


class PromptData(L.LightningDataModule):
    """Prediction inputs: prompts (txt / JSONL), GenEval metadata, or image-question JSONL.

    Args:
        path: the input file.
        format: `auto` (from the suffix and the first JSON line), `prompts`, `geneval` or `vqa`.
        batch_size: prompts (or questions) per batch; each prompt brings all its images.
        limit: only the first `limit` items (smoke runs).
    """

    def __init__(self, path: str, format: Literal["auto", "prompts", "geneval", "vqa"] = "auto",
                 batch_size: int = 4, limit: int | None = None, num_workers: int = 0):
        super().__init__()
        self.path, self.format, self.batch_size, self.limit = path, format, batch_size, limit
        self.num_workers = num_workers
        self.items: list[dict] = []

    def setup(self, stage: str) -> None:
        self.format, self.items = read_items(self.path, self.format)
        if self.limit is not None:
            self.items = self.items[: self.limit]

    def predict_dataloader(self) -> DataLoader:
        # batches are lists of item dicts: tokenisation happens in the model, where a bad item can
        # fail on its own
        return DataLoader(self.items, batch_size=self.batch_size, shuffle=False, collate_fn=list,
                          num_workers=self.num_workers)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class JanusGenerator(L.LightningModule):
    """Janus-Pro for `predict`: text-to-image (`task: t2i`) or answers about images (`understand`).

    Args:
        checkpoint: pretrained directory (DeepSeek or transformers layout), Lightning `.ckpt`, or
            sharded Lightning checkpoint directory.
        task: `t2i` or `understand`.
        images_per_prompt: images per prompt (a JSONL item's `n` overrides it).
        cfg_weight: classifier-free guidance weight w in uncond + w * (cond - uncond).
        temperature: sampling temperature; default 1 for t2i and 0 (greedy) for understanding.
        top_k: sample only among the k most likely tokens.
        top_p: sample only from the smallest set of tokens holding this much probability.
        seed: item i is drawn with seed + i unless it names its own `seed`; image j of an item
            depends only on (seed, j), never on the batch.
        max_new_tokens: answer length limit (understanding).
        dtype: weights' dtype; `auto` = bfloat16 on a GPU that supports it, else float32.
        cuda_graphs: replay decode steps as CUDA graphs (default: on a GPU).
        compile: torch.compile the decoder layer halves (default: on a GPU with Triton).
        fail_fast: raise on the first bad item instead of recording it and going on.
    """

    def __init__(self, checkpoint: str, task: Literal["t2i", "understand"] = "t2i", images_per_prompt: int = 4,
                 cfg_weight: float = 5.0, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, max_new_tokens: int = 256,
                 dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", cuda_graphs: bool | None = None,
                 compile: bool | None = None, fail_fast: bool = False):
        super().__init__()
        if images_per_prompt < 1:
            raise ValueError("images_per_prompt must be at least 1")
        self.save_hyperparameters()
        self.checkpoint, self.task = checkpoint, task
        self.temperature = temperature if temperature is not None else (1.0 if task == "t2i" else 0.0)
        self.model = None
        self.processor = None
        self.decoder: StaticDecoder | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from lit_janus.checkpoint import load_any

        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        name = self.hparams.dtype
        if name == "auto":
            name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        model, self.processor = load_any(self.checkpoint, dtype=_DTYPES[name], device=str(device))
        self.model = model.eval().requires_grad_(False)
        self.decoder = StaticDecoder(self.model, cuda_graphs=self.hparams.cuda_graphs, compile=self.hparams.compile)

    # ---- one batch ----------------------------------------------------------------------------
    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        results: list[dict | None] = [None] * len(batch)
        todo = []
        for i, item in enumerate(batch):
            if item.get("done"):
                results[i] = {**item, "skipped": True}
            elif "error" in item:
                results[i] = self._failed(item, item["error"])
            else:
                todo.append(i)
        run = self._images if self.task == "t2i" else self._answers
        for i, result in zip(todo, run([batch[i] for i in todo])):
            results[i] = result
        return results

    def _failed(self, item: dict, error: BaseException | str) -> dict:
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.hparams.fail_fast:
            if isinstance(error, BaseException):
                raise ValueError(f"item {item.get('index')}: {msg}") from error
            raise ValueError(f"item {item.get('index')}: {msg}")
        return {**item, "error": msg}

    def _seed(self, item: dict) -> int:
        return int(item["seed"]) if item.get("seed") is not None else self.hparams.seed + int(item["index"])

    def _sampling(self) -> dict:
        h = self.hparams
        return {"temperature": self.temperature, "top_k": h.top_k, "top_p": h.top_p}

    def _images(self, items: list[dict]) -> list[dict]:
        out: list[dict] = []
        cond, uncond, keys, spans = [], [], [], []
        for item in items:
            try:
                if "prompt" not in item:
                    raise ValueError("item has no 'prompt' (an image-question file needs task: understand)")
                ids = self.processor.t2i_prompt_ids(item["prompt"])
                n = int(item.get("n") or self.hparams.images_per_prompt)
                if n < 1:
                    raise ValueError(f"n must be at least 1, got {n}")
            except ITEM_ERRORS as e:
                out.append(self._failed(item, e))
                continue
            seed = self._seed(item)
            spans.append((len(out), len(cond), n, seed))
            out.append(item)
            for j in range(n):
                cond.append(ids)
                uncond.append(self.processor.unconditional_ids(ids))
                keys.append(seed_key(seed, j))
        if not cond:
            return out
        codes = self.decoder.images(cond, uncond, keys, cfg_weight=self.hparams.cfg_weight,
                                    pad_id=self.processor.pad_id, **self._sampling())
        images = decode_images(self.model, codes)
        for at, start, n, seed in spans:
            out[at] = {**out[at], "seed": seed, "images": images[start:start + n],
                       "cfg_weight": self.hparams.cfg_weight, **self._sampling()}
        return out

    def _answers(self, items: list[dict]) -> list[dict]:
        out: list[dict] = []
        embeds, keys, where = [], [], []
        for item in items:
            try:
                if not item.get("image"):
                    raise ValueError("item has no 'image' (a prompts file needs task: t2i)")
                embeds.append(question_embeds(self.model, self.processor, item["image"], item["question"]))
            except ITEM_ERRORS as e:
                out.append(self._failed(item, e))
                continue
            keys.append(seed_key(self._seed(item)))
            where.append(len(out))
            out.append(item)
        if not embeds:
            return out
        ids = self.decoder.text(embeds, keys, max_new_tokens=self.hparams.max_new_tokens,
                                eos_id=self.processor.eos_id, **self._sampling())
        for at, x in zip(where, ids):
            out[at] = {**out[at], "answer": self.processor.decode(x).strip(), "answer_tokens": len(x),
                       **self._sampling()}
        return out


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: a killed run never leaves a half-written file under
    the final name (the temp name starts with '.' so scorers globbing for `\\d+.png` skip it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_png(image: torch.Tensor, path: Path) -> None:
    """uint8 [H, W, 3] -> PNG, atomically."""
    from PIL import Image

    im = Image.fromarray(image.numpy())
    _atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


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
        _atomic_write(path, lambda tmp: tmp.write_bytes(raw))
    out = []
    for line in raw.decode("utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _clip(v, n: int = 300):
    return v[:n] + f"... ({len(v)} characters)" if isinstance(v, str) and len(v) > n else v


class _Writer(BasePredictionWriter):
    """Shared by the writers: output folder, errors.jsonl, resume bookkeeping."""

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.done: set[int] = set()
        self.counts = {"written": 0, "skipped": 0, "failed": 0}

    @property
    def errors_path(self) -> Path:
        return self.output_dir / "errors.jsonl"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            # failed items are retried on a rerun and re-recorded if they fail again
            self.errors_path.unlink(missing_ok=True)
        trainer.strategy.barrier()
        self.done = self._written()

    def _prepare(self) -> None:
        """Rank 0, before anything is written (repair files a killed run left)."""

    def _written(self) -> set[int]:
        raise NotImplementedError

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        # mark items a previous run already wrote; the model skips them
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
                errors.append({k: _clip(v) for k, v in r.items()
                               if k in ("index", "prompt", "question", "image", "id", "error")})
            else:
                self._write(r)
                self.done.add(r["index"])
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


class ImageWriter(_Writer):
    """Writes text-to-image predictions.

    `default` layout: `images/<index:05d>_<j:02d>.png`, `grids/<index:05d>.png` and one
    `metadata.jsonl` line per image (index, prompt, seed, image_index, cfg_weight, temperature,
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
        if self.layout == "default":
            _repair_jsonl(self.output_dir / "metadata.jsonl")

    def _written(self) -> set[int]:
        if self.layout == "geneval":
            return {int(d.name) for d in self.output_dir.iterdir()
                    if d.is_dir() and d.name.isdigit() and (d / "metadata.jsonl").is_file()}
        return {int(r["index"]) for r in _repair_jsonl(self.output_dir / "metadata.jsonl") if "index" in r}

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
            _atomic_write(folder / "metadata.jsonl", lambda tmp: tmp.write_text(json.dumps(meta) + "\n"))
            return
        grid_file = f"grids/{index:05d}.png" if self.grid else None
        for j, im in enumerate(images):
            save_png(im, self.output_dir / "images" / f"{index:05d}_{j:02d}.png")
        if grid_file:
            save_png(image_grid(images), self.output_dir / grid_file)
        common = {k: r[k] for k in ("prompt", "seed", "cfg_weight", "temperature", "top_k", "top_p")}
        lines = [{"index": index, "image_index": j, **common, "file": f"images/{index:05d}_{j:02d}.png",
                  "grid": grid_file} | ({"metadata": r["metadata"]} if "metadata" in r else {})
                 for j in range(len(images))]
        _append_jsonl(self.output_dir / "metadata.jsonl", lines)


class AnswerWriter(_Writer):
    """Writes understanding predictions to `<output_dir>/<filename>`, one JSON line per question:
    index, id (if given), image, question, answer, answer_tokens, temperature, top_k, top_p."""

    def __init__(self, output_dir: str, filename: str = "answers.jsonl"):
        super().__init__(output_dir)
        self.filename = filename

    def _prepare(self) -> None:
        _repair_jsonl(self.output_dir / self.filename)

    def _written(self) -> set[int]:
        return {int(r["index"]) for r in _repair_jsonl(self.output_dir / self.filename) if "index" in r}

    def _write(self, r: dict) -> None:
        keys = ("index", "id", "image", "question", "answer", "answer_tokens", "temperature", "top_k", "top_p")
        _append_jsonl(self.output_dir / self.filename, [{k: r[k] for k in keys if k in r}])


__all__ = ["AnswerWriter", "ImageWriter", "JanusGenerator", "PromptData", "image_grid", "read_items", "save_png"]
