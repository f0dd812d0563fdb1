"""`JanusGenerator`: the LightningModule `predict` runs - loads any checkpoint, samples images (CFG) or
answers with the fast `StaticDecoder`, and turns a bad item into an error record instead of a crash."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from lit_janus.decoder import StaticDecoder
from lit_janus.generate import decode_images, question_embeds
from lit_janus.sampling import seed_key
from lit_janus.processor import PromptTooLongError

# what a bad *item* can raise (PromptTooLongError is a ValueError); anything else is a real failure
ITEM_ERRORS = (ValueError, OSError)


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

    def run_settings(self) -> dict:
        """What decides this run's outputs, as the writers record it (`run.json`): the checkpoint and the
        sampling settings as resolved here (default temperature, `dtype: auto` for this device)."""
        h = self.hparams
        keys = ["task", "seed", "top_k", "top_p"]
        keys += ["images_per_prompt", "cfg_weight"] if h.task == "t2i" else ["max_new_tokens"]
        return ({"checkpoint": str(Path(h.checkpoint).resolve()),
                 "checkpoint_fingerprint": checkpoint_fingerprint(h.checkpoint)}
                | {k: h[k] for k in keys} | {"temperature": self.temperature, "dtype": self.dtype_name()})

    # ---- one batch ----------------------------------------------------------------------------
    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        run = self._images if self.task == "t2i" else self._answers
        if self.hparams.fail_fast:  # stop at the first bad item in file order, not at the first unparseable one
            bad = next((i for i, it in enumerate(batch) if "error" in it and not it.get("done")), None)
            if bad is not None:
                run([it for it in batch[:bad] if "error" not in it and not it.get("done")])  # may fail first
                self._failed(batch[bad], batch[bad]["error"])  # raises
        results: list[dict | None] = [None] * len(batch)
        todo = []
        for i, item in enumerate(batch):
            if item.get("done"):
                results[i] = {**item, "skipped": True}
            elif "error" in item:
                results[i] = self._failed(item, item["error"])
            else:
                todo.append(i)
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


__all__ = ["ITEM_ERRORS", "JanusGenerator", "checkpoint_fingerprint"]
