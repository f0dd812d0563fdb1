"""Prediction inputs: a .txt of prompts, a JSONL of prompts, GenEval's `evaluation_metadata.jsonl`, or
a JSONL of image-question pairs, read into items (one per line, numbered by line) for `PromptData`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader


def read_items(path: str | Path, format: str = "auto") -> tuple[str, list[dict]]:
    """(format, items) of a prompts / GenEval / image-question file. Every item has an `index` (its
    line number, which names its outputs); a line that cannot be used (invalid JSON, a missing or
    mistyped field) becomes an item with an `error`, reported like any other bad item.

    A `.txt` file, or any file whose first line is not a JSON object, holds one prompt per line;
    otherwise each line is a JSON object. Lines end at "\\n" (or "\\r\\n") only: JSON strings may
    hold U+2028 and other characters Python's `splitlines` would also break at."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory: give the prompts / questions file itself")
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: Windows editors start with a BOM
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{p}: line {line} is not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8") from None
    lines = split_lines(text)
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
        raise ValueError(f"{key!r} must be {what}, got {type(v).__name__} {clip_text(json.dumps(v), 60)}")
    return v


def _item(i: int, obj: dict, format: str, folder: Path) -> dict:
    """One JSONL record as a predict item; ValueError (with what to fix) for a missing or mistyped field."""
    seed = _field(obj, "seed", int, "an integer", required=False)
    if format == "vqa":
        item = {"index": i, "question": _field(obj, "question", str, "a string")}
        images = _field(obj, "image", (str, list), "a path or a list of paths")
        if isinstance(images, list) and not all(isinstance(x, str) for x in images):
            raise ValueError("'image' must be a path or a list of paths")
        if not images or (isinstance(images, list) and "" in images):  # "" would resolve to the file's folder
            raise ValueError("'image' is empty: give an image path")
        # relative to the JSONL's folder
        resolve = lambda x: x if Path(x).is_absolute() else str(folder / x)  # noqa: E731
        item["image"] = [resolve(x) for x in images] if isinstance(images, list) else resolve(images)
        # carried to answers.jsonl as they are, e.g. the reference answer to score against
        item |= {k: obj[k] for k in ("id", "metadata") if k in obj and obj[k] is not None}
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
        if batch_size < 1 or (limit is not None and limit < 1):
            raise ValueError(f"batch_size ({batch_size}) and limit ({limit}) must be >= 1 (limit: null for all items)")
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


def clip_text(v, n: int = 300):
    """`v` cut to `n` characters (with a note of the full length) if it is a long string."""
    return v[:n] + f"... ({len(v)} characters)" if isinstance(v, str) and len(v) > n else v


__all__ = ["PromptData", "clip_text", "read_items", "split_lines"]
