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
from lit_janus.processor import PromptTooLongError

log = logging.getLogger(__name__)

# what a bad *item* can raise (PromptTooLongError is a ValueError); anything else is a real failure
ITEM_ERRORS = (ValueError, OSError)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def read_items(path: str | Path, format: str = "auto") -> tuple[str, list[dict]]:
    """(format, items) of a prompts / GenEval / image-question file. Every item has an `index` (its
    line number, which names its outputs); a line that cannot be used (invalid JSON, a missing or
    mistyped field) becomes an item with an `error`, reported like any other bad item.

    A `.txt` file, or any file whose first line is not a JSON object, holds one prompt per line;
    otherwise each line is a JSON object. Lines end at "\\n" (or "\\r\\n") only: JSON strings may
    hold U+2028 and other characters Python's `splitlines` would also break at."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    lines = split_lines(p.read_text(encoding="utf-8-sig"))  # -sig: Windows editors start with a BOM
    plain = p.suffix.lower() == ".txt" or (p.suffix.lower() not in _JSON_SUFFIXES and _first_object(lines) is None)
    if plain:
        if format not in ("auto", "prompts"):
            raise ValueError(f"{p}: format {format!r} needs a JSONL file (one JSON object per line); this file "
                             "reads as plain text, one prompt per line")
        return "prompts", [{"index": i, "prompt": line.strip()} for i, line in enumerate(lines)]
    if format == "auto":
        format = _sniff(lines)
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
        try:
            items.append(_item(i, obj, format, p.parent))
        except ValueError as e:
            items.append({"index": i, "error": f"{p.name} line {i + 1}: {e}"})
    return format, items


_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def split_lines(text: str) -> list[str]:
    """Lines of a text file, split at "\\n" only (a trailing "\\r" is dropped, a final newline ends
    the last line rather than starting an empty one)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _field(obj: dict, key: str, types: type | tuple, what: str, required: bool = True):
    """obj[key] checked against `types` (bool is not an int here); None if absent and optional."""
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"no {key!r} field" if key not in obj else f"{key!r} is null; it must be {what}")
        return None
    v = obj[key]
    if not isinstance(v, types) or isinstance(v, bool):
        raise ValueError(f"{key!r} must be {what}, got {type(v).__name__} {_clip(json.dumps(v), 60)}")
    return v


def _item(i: int, obj: dict, format: str, folder: Path) -> dict:
    """One JSONL record as a predict item; ValueError (with what to fix) for a missing or mistyped field."""
    seed = _field(obj, "seed", int, "an integer", required=False)
    if format == "vqa":
        item = {"index": i, "question": _field(obj, "question", str, "a string")}
        images = _field(obj, "image", (str, list), "a path or a list of paths")
        if isinstance(images, list) and not all(isinstance(x, str) for x in images):
            raise ValueError("'image' must be a path or a list of paths")
        # relative to the JSONL's folder
        resolve = lambda x: x if Path(x).is_absolute() else str(folder / x)  # noqa: E731
        item["image"] = [resolve(x) for x in images] if isinstance(images, list) else resolve(images)
        if "id" in obj:
            item["id"] = obj["id"]
    else:
        item = {"index": i, "prompt": _field(obj, "prompt", str, "a string")}
        if format == "geneval":
            item["metadata"] = obj
        else:
            n = _field(obj, "n", int, "an integer >= 1", required=False)
            if n is not None and n < 1:
                raise ValueError(f"'n' must be an integer >= 1, got {n}")
            item |= {k: obj[k] for k in ("n", "metadata") if k in obj and obj[k] is not None}
    return item | ({"seed": seed} if seed is not None else {})


def _first_object(lines: list[str]) -> dict | None:
    """The first non-blank line parsed as a JSON object, or None if it is not one."""
    for line in lines:
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


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
        if not self.items:
            raise ValueError(f"{self.path} holds no prompts or questions (an empty file?)")
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
        bad = [msg for ok, msg in [
            (images_per_prompt >= 1, f"images_per_prompt must be >= 1, got {images_per_prompt}"),
            (temperature is None or temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {temperature}"),
            (top_k is None or top_k >= 0, f"top_k must be >= 1 (or 0 / null for no limit), got {top_k}"),
            (top_p is None or 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
            (math.isfinite(cfg_weight), f"cfg_weight must be a finite number, got {cfg_weight}"),
            (max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"),
        ] if not ok]
        if bad:
            raise ValueError("; ".join(bad))
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

        device = self._target_device()
        model, self.processor = load_any(self.checkpoint, dtype=_DTYPES[self.dtype_name()], device=str(device))
        self.model = model.eval().requires_grad_(False)
        self.decoder = StaticDecoder(self.model, cuda_graphs=self.hparams.cuda_graphs, compile=self.hparams.compile)

    def _target_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")

    def dtype_name(self) -> str:
        """The weights' dtype: `dtype`, with `auto` resolved for the device this run uses."""
        name, device = self.hparams.dtype, self._target_device()
        if name == "auto":
            name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        return name

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
        seed = item.get("seed")
        if seed is None:
            return self.hparams.seed + int(item["index"])
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        return seed

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
                n = item.get("n", self.hparams.images_per_prompt)
                if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                    raise ValueError(f"n must be an integer >= 1, got {n!r}")
                seed = self._seed(item)
            except ITEM_ERRORS as e:
                out.append(self._failed(item, e))
                continue
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
                x = question_embeds(self.model, self.processor, item["image"], item["question"])
                room = self.processor.max_length - self.hparams.max_new_tokens
                if x.shape[0] > room:
                    raise PromptTooLongError(
                        f"question is {x.shape[0]} tokens with its image(s) but only {room} fit (context "
                        f"{self.processor.max_length} minus max_new_tokens {self.hparams.max_new_tokens}): "
                        "shorten it or lower max_new_tokens")
                key = seed_key(self._seed(item))
            except ITEM_ERRORS as e:
                out.append(self._failed(item, e))
                continue
            embeds.append(x)
            keys.append(key)
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
    for line in split_lines(raw.decode("utf-8")):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _clip(v, n: int = 300):
    return v[:n] + f"... ({len(v)} characters)" if isinstance(v, str) and len(v) > n else v


def checkpoint_fingerprint(path: str | Path) -> str:
    """A short hash of a checkpoint's files (names, sizes, modification times): changes when the
    weights at that path are replaced, e.g. a newer `last.ckpt`. Not a content hash (that would read
    gigabytes)."""
    import hashlib

    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if f != p else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def run_settings(pl_module) -> dict | None:
    """What decides a predict run's outputs (`run.json`): the checkpoint and the sampling settings.
    None for a module that is not a JanusGenerator (nothing to check)."""
    h = getattr(pl_module, "hparams", {})
    if "checkpoint" not in h:
        return None
    keys = ["task", "seed", "top_k", "top_p"]
    keys += ["images_per_prompt", "cfg_weight"] if h["task"] == "t2i" else ["max_new_tokens"]
    return ({"checkpoint": str(Path(h["checkpoint"]).resolve()),
             "checkpoint_fingerprint": checkpoint_fingerprint(h["checkpoint"])}
            | {k: h[k] for k in keys} | {"temperature": pl_module.temperature, "dtype": pl_module.dtype_name()})


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
            self._check_run(run_settings(pl_module))
            # failed items are retried on a rerun and re-recorded if they fail again
            self.errors_path.unlink(missing_ok=True)
        trainer.strategy.barrier()
        self.done = self._written()
        # datamodule.setup ran before this hook: a changed input file fails here, before any work
        self._check_items(getattr(trainer.datamodule, "items", None) or [])

    def _check_run(self, settings: dict | None) -> None:
        """Rank 0: refuse to resume into a folder another checkpoint or other settings wrote."""
        if settings is None:
            return
        if self.run_path.is_file():
            try:
                before = json.loads(self.run_path.read_text())
            except ValueError:
                before = {}
            changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
            if changed:
                raise ValueError(
                    f"{self.output_dir} holds the outputs of another predict run ({self.run_path}: "
                    + "; ".join(changed) + "). A rerun only resumes the same run: write to another output_dir "
                    "(--trainer.callbacks.init_args.output_dir) or delete that folder.")
            return
        if self._written():
            log.warning("%s has outputs but no run.json (an older version wrote it): cannot check they come "
                        "from this checkpoint and these settings; resuming, and recording them now", self.output_dir)
        _atomic_write(self.run_path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))

    def _identity(self, record: dict) -> tuple:
        return tuple(record.get(k) for k in self.IDENTITY)

    def _check_items(self, items: list[dict]) -> None:
        wrong = [(it["index"], self.done[it["index"]], self._identity(it)) for it in items
                 if "error" not in it and it.get("index") in self.done
                 and self.done[it["index"]] != self._identity(it)]
        if wrong:
            shown = "; ".join(f"item {i}: written for {_clip(str(a), 80)}, now {_clip(str(b), 80)}"
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
                errors.append({k: _clip(v) for k, v in r.items()
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
        keys = ("index", "id", "image", "question", "answer", "answer_tokens", "temperature", "top_k", "top_p")
        _append_jsonl(self.output_dir / self.filename, [{k: r[k] for k in keys if k in r}])


__all__ = ["AnswerWriter", "ImageWriter", "JanusGenerator", "PromptData", "image_grid", "read_items", "save_png"]
