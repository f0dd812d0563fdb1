"""Where raw training records come from. A source yields plain dicts; `tasks.py` turns them into `Sample`s.

Record formats (one JSON object per line in a manifest, or a JSON array of them as LLaVA and ShareGPT4V
ship theirs; relative paths resolve against the manifest's directory, or `root`):

understanding (`und`)
    {"image": "a.jpg", "conversations": [{"role": "user", "content": "What is this?"},
                                         {"role": "assistant", "content": "A red circle."}, ...]}
    {"image": "a.jpg", "question": "What is this?", "answer": "A red circle."}
  `"images": [...]` (or `"image": [...]`) gives several images, all placed before the first question.
  Roles are matched case-insensitively (`user`/`assistant`, `User`, `<|User|>`); LLaVA-style turns
  (`{"from": "human"|"gpt", "value": ...}`) are accepted too; turns before the first user turn (a
  `system` turn, an assistant greeting) are left out. Image markers (`<image>`,
  `<image_placeholder>`) are dropped from the questions, in any turn, since the images always go
  first (as in DeepSeek's template); when a record has markers there must be one per image. Every
  assistant turn of a multi-turn conversation is supervised; a trailing unanswered user turn is dropped.
text (`text`)
    {"text": "..."}                                                a document, every token supervised
    {"conversations": [...]} or {"question": ..., "answer": ...}   text-only dialogue (no image): the chat
                                                                   template, its answers supervised
text-to-image (`t2i`)
    {"image": "x.jpg", "caption": "..."}                          VQ-encoded on the fly by the model
    {"codes": "x.npy", "caption": "..."}                          pre-extracted codes, one file per image
    {"codes": [17, 4, ...], "caption": "..."}                     codes inline
    {"codes": "codes.npy", "codes_row": 12, "caption": "..."}     row 12 of one [N, tokens] array
  (`"prompt"` is accepted for `"caption"`; when a record has both codes and an image, the codes win.
  Codes must be non-negative integers, `num_image_tokens` of them; records of both kinds mix freely.)
  Pre-extracted manifests are written by the `predict` config `configs/predict/extract_codes.yaml`.

Sources:
- `JsonlSource`       a JSONL manifest (indexed by byte offsets: workers share no Python objects), or a
                      JSON array file (`llava_v1_5_mix665k.json`), held as one buffer of JSON lines;
- `ClassFolderSource` ImageNet-style `root/<class>/*.jpg` for Stage I: t2i records whose caption is the
                      class name (from `classes.json`, `synset_words.txt` or the folder name);
- `ShapesSource`      ShapesWorld records of any length, a pure function of (seed, index);
- `WebDatasetSource`  WebDataset tar shards (img2dataset's output), in `tar_shards.py`;
- `StreamingSource`   a litdata directory written by `python -m lit_janus.data.optimize` (image bytes
                      inside; local or cloud), read in litdata's chunk-aware shuffled order.
All but the last are map-style (`len`, `[i]`); a streaming source is iterated.
"""

from __future__ import annotations

import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class BadRecord(ValueError):
    """A record that cannot become a training sample (malformed, missing field, unreadable file)."""


class Source(ABC):
    """Map-style collection of raw records (dicts in the formats of the module docstring)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]:
        """The record at `index`; raises `BadRecord` (or OSError/ValueError) for a broken one."""

    def locate(self, index: int) -> str:
        """Where record `index` lives, for error messages."""
        return f"{type(self).__name__}[{index}]"


# ------------------------------------------------------------------------------------------------
# JSONL manifests
# ------------------------------------------------------------------------------------------------
PATH_KEYS = ("image", "images", "codes")


def resolve_paths(record: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make the relative file paths of a record absolute against `root` (a manifest's directory)."""
    for key in PATH_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value:  # "" stays "": no image, not the root folder
            record[key] = str(root / value)
        elif key != "codes" and isinstance(value, list):  # a list of codes is the codes themselves
            record[key] = [str(root / v) if isinstance(v, str) and v else v for v in value]
    return record


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte-order mark, then whitespace
    return head.startswith(b"[")


def has_image(record: Any) -> bool:
    """Whether a record names an image (`image` or `images`, not empty)."""
    return isinstance(record, dict) and bool(record.get("images", record.get("image")))


def _small_ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32 if not values or values[-1] < 2**31 else np.int64)


def _json_array_lines(path: Path, keep=lambda record: True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A JSON array file as one byte buffer of compact JSON lines, their n + 1 boundaries and each kept
    record's 1-based position in the array: the same per-record lookup as a JSONL file, with no Python
    object per record left to copy into workers."""
    with open(path, "rb") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} starts like a JSON array but does not parse: {e}") from None
    kept = [i for i, r in enumerate(records, 1) if keep(r)]
    lines = [json.dumps(records[i - 1], ensure_ascii=False, separators=(",", ":")).encode() for i in kept]
    del records
    bounds = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=bounds[1:])
    return np.frombuffer(b"".join(lines), dtype=np.uint8), bounds, _small_ints(kept)


class JsonlSource(Source):
    """A JSONL manifest, one record per line (blank lines ignored), or a JSON array file of records
    (LLaVA's `llava_v1_5_mix665k.json`, ShareGPT4V's captions; with `root` their image folder).

    Only the byte offset of each line is kept in memory, in a numpy array: a Python list of dicts
    would be copied page by page into every DataLoader worker as reference counts change. A JSON array
    is parsed once and kept as one buffer of JSON lines (about the file's size).

    `has_image` splits a mixed manifest between streams: LLaVA's mix holds ~41k text-only ShareGPT
    conversations among its 665k records, understanding data for the `und` stream (`has_image: true`)
    and chat data for the `text` stream (`has_image: false`)."""

    def __init__(self, path: str, root: str | None = None, has_image: bool | None = None):
        """
        Args:
            path: the manifest: JSON Lines (`.jsonl`), or a JSON array (`.json`).
            root: directory that relative paths resolve against (default: the manifest's directory).
            has_image: keep only the records that name an image (true) or only those that do not (false);
                default: all. Filtering parses every record once when the source is first used (a line that
                is not a JSON object is kept either way, to be reported).
        """
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        self.has_image = has_image
        self._offsets: np.ndarray | None = None
        self._lines: np.ndarray | None = None  # a JSON array's records as JSON lines; _offsets then has n + 1
        self._numbers: np.ndarray | None = None  # each record's line (JSONL) or array position, for messages
        self._file = None
        self._pid = None

    def _index(self) -> np.ndarray:
        if self._offsets is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"manifest not found: {self.path}")
            if _is_json_array(self.path):
                self._lines, self._offsets, self._numbers = _json_array_lines(self.path, self._keep)
                return self._offsets
            offsets, numbers, at = [], [], 0
            with open(self.path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if line.strip() and (self.has_image is None or self._keep_line(line)):
                        offsets.append(at)
                        numbers.append(number)
                    at += len(line)
            self._offsets, self._numbers = np.asarray(offsets, dtype=np.int64), _small_ints(numbers)
        return self._offsets

    def _keep(self, record: Any) -> bool:
        # a line that is no JSON object is kept either way: reported as a bad record when drawn
        return self.has_image is None or not isinstance(record, dict) or has_image(record) == self.has_image

    def _keep_line(self, line: bytes) -> bool:
        try:
            return self._keep(json.loads(line))
        except ValueError:  # not JSON, or not UTF-8: reported as a bad record when drawn
            return True

    def __len__(self) -> int:
        n = len(self._index())
        return n - 1 if self._lines is not None else n

    def _handle(self):
        # one handle per process: a handle inherited through fork shares its file position
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        return self._file

    def __getitem__(self, index: int) -> dict[str, Any]:
        offsets = self._index()
        if self._lines is not None:
            line = self._lines[offsets[index]:offsets[index + 1]].tobytes()
        else:
            f = self._handle()
            f.seek(int(offsets[index]))
            line = f.readline()
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRecord(f"invalid JSON: {e}") from None
        if not isinstance(record, dict):
            raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
        return resolve_paths(record, self.root)

    def locate(self, index: int) -> str:
        numbers = self._numbers
        if numbers is None or not 0 <= index < len(numbers):
            return f"{self.path}, record {index}"
        return f"{self.path}, {'record' if self._lines is not None else 'line'} {numbers[index]}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None  # open files do not pickle (spawned workers)
        return state


# ------------------------------------------------------------------------------------------------
# ImageNet-style class folders (Stage I: class name -> image)
# ------------------------------------------------------------------------------------------------
def read_class_names(path: Path) -> dict[str, str] | list[str]:
    """A class-name mapping: JSON (`{"n01440764": "tench"}` or a list in sorted-folder order), or
    text lines `FOLDER NAME...` (`synset_words.txt`: `n01440764 tench, Tinca tinca`)."""
    if path.suffix == ".json":
        names = json.loads(path.read_text())
        if not isinstance(names, (dict, list)):
            raise ValueError(f"{path}: expected a JSON object or list of class names")
        # ImageNet's classic index file maps "0" -> ["n01440764", "tench"]
        if isinstance(names, dict) and all(isinstance(v, list) and len(v) == 2 for v in names.values()):
            names = {folder: name for folder, name in names.values()}
        return names
    out = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


class ClassFolderSource(Source):
    """`root/<class>/*.jpg` as text-to-image records `{"image", "caption": class name, "label"}`.

    Janus-Pro Stage I trains generation on ImageNet with the class name as the prompt. The class
    name comes from `class_names` (or a `classes.json` / `synset_words.txt` found in `root` or its
    parent); otherwise from the folder name with `_` read as a space. Of comma-separated synonyms
    ("tench, Tinca tinca") the first is used unless `first_synonym` is off."""

    def __init__(self, root: str, class_names: str | None = None, first_synonym: bool = True):
        """
        Args:
            root: the directory holding one sub-directory per class.
            class_names: a JSON or `synset_words.txt`-style file mapping folder names to class names.
            first_synonym: keep only the text before the first comma of a class name.
        """
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"class-folder root not found: {self.root}")
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not folders:
            raise ValueError(f"{self.root} has no class sub-directories")
        mapping_file = Path(class_names) if class_names else self._find_mapping()
        mapping = read_class_names(mapping_file) if mapping_file else {}
        if isinstance(mapping, list):
            if len(mapping) != len(folders):
                raise ValueError(f"{mapping_file} lists {len(mapping)} names for {len(folders)} class folders")
            mapping = dict(zip(folders, mapping))
        names = []
        for folder in folders:
            name = mapping.get(folder, folder.replace("_", " "))
            names.append(name.split(",")[0].strip() if first_synonym else name.strip())
        self.class_names = names
        paths, labels = [], []
        for label, folder in enumerate(folders):
            for f in sorted((self.root / folder).iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(f"{folder}/{f.name}".encode())
                    labels.append(label)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        # fixed-width bytes: no per-path Python objects to copy into each worker
        self._paths = np.asarray(paths, dtype=np.bytes_)
        self._labels = np.asarray(labels, dtype=np.int32)

    def _find_mapping(self) -> Path | None:
        for d in (self.root, self.root.parent):
            for name in ("classes.json", "synset_words.txt", "LOC_synset_mapping.txt"):
                if (d / name).is_file():
                    return d / name
        return None

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = int(self._labels[index])
        return {"image": str(self.root / self._paths[index].decode()), "caption": self.class_names[label],
                "label": label}

    def locate(self, index: int) -> str:
        return str(self.root / self._paths[index].decode())


# ------------------------------------------------------------------------------------------------
# ShapesWorld
# ------------------------------------------------------------------------------------------------
class ShapesSource(Source):
    """ShapesWorld records, `length` of them, each a pure function of (seed, index).

    kinds: `qa` (understanding question/answer on a 1-4 object scene), `text` (sentences), `t2i`
    (prompts in the six GenEval categories), `class` (Stage I class-name prompts, e.g. "red circle").
    Use another `seed` for held-out validation data of the same distribution."""

    def __init__(self, kind: Literal["qa", "text", "t2i", "class"], length: int = 100_000, seed: int = 0,
                 split: Literal["train", "heldout"] = "train", image_size: int = 64, turns: int = 1,
                 object_order: Literal["random", "reading"] = "random", t2i_weights: dict[str, float] | None = None):
        """
        Args:
            kind: which ShapesWorld generator.
            length: number of records (the world is infinite; this sets an epoch).
            seed: world seed.
            split: `heldout` draws t2i/class targets only from the held-out colour-shape combos.
            image_size: rendered image side in pixels.
            turns: `qa` only: distinct questions per scene, as one multi-turn conversation (up to 6: one
                per question type; more: further questions of random types).
            object_order: `t2i` only: which object a two-object prompt names first, `random` (GenEval's
                prompts) or `reading` (the one a raster scan draws first; see configs/shapes/README.md).
            t2i_weights: `t2i` only: the category mix, as relative weights, e.g. `{single_object: 1,
                two_object: 1, counting: 1, colors: 1, position: 1, color_attr: 3}`; a category left out
                is never drawn. Default: the six GenEval categories (or the heldout split's two) equally.
        """
        from lit_janus.shapes import ShapesWorld

        if kind not in ("qa", "text", "t2i", "class"):
            raise ValueError(f"unknown ShapesWorld kind {kind!r}; choose qa, text, t2i or class")
        if not 1 <= turns <= 32:
            raise ValueError(f"turns must be 1-32 (distinct questions per scene), got {turns}")
        self.kind, self.length, self.turns = kind, length, turns
        if t2i_weights is not None and kind != "t2i":
            raise ValueError(f"t2i_weights sets the text-to-image category mix; kind {kind!r} has none")
        self.world = ShapesWorld(seed=seed, image_size=image_size, split=split, object_order=object_order,
                                 t2i_weights=t2i_weights)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        w = self.world
        if self.kind == "qa" and self.turns > 1:
            return w.qa_conversation(index, self.turns)
        if self.kind == "qa":
            r = w.qa_sample(index)
            return {"image": r["image"], "question": r["question"], "answer": r["answer"]}
        if self.kind == "text":
            return w.text_sample(index)
        if self.kind == "t2i":
            r = w.t2i_sample(index)
            return {"image": r["image"], "caption": r["prompt"], "category": r["metadata"]["tag"]}
        r = w.class_sample(index)
        return {"image": r["image"], "caption": r["class_name"], "label": r["label"]}


# ------------------------------------------------------------------------------------------------
# litdata streaming directories
# ------------------------------------------------------------------------------------------------
class StreamingSource:
    """A litdata directory (local path or `s3://...`) written by `python -m lit_janus.data.optimize`.

    Each item is `{"record": JSON string, "image": bytes}`: the record in the manifest format with
    the image file's original bytes stored inside (no re-encoding). Iterated with litdata's
    chunk-aware shuffle; litdata shards chunks over ranks and DataLoader workers itself."""

    def __init__(self, input_dir: str, shuffle: bool = True, cache_dir: str | None = None,
                 max_cache_size: str | None = None):
        """
        Args:
            input_dir: the optimized directory (or its cloud URL).
            shuffle: shuffle chunks and items within them every epoch.
            cache_dir: where litdata caches remote chunks.
            max_cache_size: cache budget, e.g. "100GB".
        """
        self.input_dir, self.shuffle = input_dir, shuffle
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size

    def dataset(self, *, seed: int, rank: int, world_size: int, num_nodes: int = 1, shard: int = 0,
                num_shards: int = 1):
        """The litdata `StreamingDataset`, sharded for `rank` of `world_size` and for DataLoader worker
        `shard` of `num_shards`. Both are set explicitly: inside a DataLoader worker torch.distributed is
        not initialised (litdata would see one process), and the shard a worker reads must not depend on
        its worker id (`TaskStream` resumes a shard in whichever worker makes its steps)."""
        try:
            from litdata import StreamingDataset
            from litdata.utilities.env import _DistributedEnv, _WorkerEnv
        except ImportError as e:  # optional extra
            raise ImportError("streaming sources need litdata: pip install 'lit_janus[streaming]' "
                              "and `pip install --no-deps litdata`") from e
        kwargs = {"max_cache_size": self.max_cache_size} if self.max_cache_size else {}
        ds = StreamingDataset(self.input_dir, cache_dir=self.cache_dir, shuffle=self.shuffle, seed=seed,
                              drop_last=world_size > 1, **kwargs)
        ds.distributed_env = _DistributedEnv(world_size=world_size, global_rank=rank, num_nodes=num_nodes)
        # the attribute litdata's threaded StreamingDataLoader sets (private; .ci/run pins litdata 0.2.76)
        ds._forced_worker_env = _WorkerEnv(world_size=num_shards, rank=shard)
        return ds

    def records(self, *, seed: int, rank: int, world_size: int, num_nodes: int = 1, shard: int = 0,
                num_shards: int = 1, skip: int = 0) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
        """Endless `(epoch, record)` pairs of one shard (see `dataset`), after its first `skip` records
        (counted over epochs: where a resumed run continues); an unparseable item yields its exception."""
        ds = self.dataset(seed=seed, rank=rank, world_size=world_size, num_nodes=num_nodes, shard=shard,
                          num_shards=num_shards)
        epoch = 0
        while True:
            ds.set_epoch(epoch + 1)  # litdata counts epochs from 1
            empty = True
            for item in ds:
                empty = False
                if skip:  # not decoded: only counted
                    skip -= 1
                    continue
                yield epoch, decode_item(item)
            if empty:
                raise ValueError(f"streaming source {self.input_dir} yields nothing on rank {rank}/{world_size}, "
                                 f"worker {shard}/{num_shards}")
            epoch += 1

    def locate(self, index: int) -> str:
        return f"{self.input_dir}, record {index}" if index >= 0 else str(self.input_dir)


def decode_item(item: dict[str, Any]) -> dict[str, Any] | Exception:
    """An optimized item back to a manifest-style record (images as file-like byte buffers)."""
    try:
        record = json.loads(item["record"])
        blob = item.get("image") or b""
        sizes = record.pop("_image_sizes", None)
        if sizes is not None:
            if sum(sizes) != len(blob):
                raise BadRecord(f"image sizes {sizes} do not add up to {len(blob)} bytes")
            chunks, at = [], 0
            for n in sizes:
                chunks.append(io.BytesIO(blob[at : at + n]))
                at += n
            if len(chunks) == 1 and "images" not in record:
                record["image"] = chunks[0]
            else:
                record["images"] = chunks
        return record
    except Exception as e:  # noqa: BLE001 - a bad item becomes a skipped sample, not a crash
        return e if isinstance(e, BadRecord) else BadRecord(f"undecodable item: {e}")
