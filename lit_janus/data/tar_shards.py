"""WebDataset tar shards (what img2dataset writes for LAION-style caption data) as a map-style source.

A WebDataset shard is a plain tar whose members are grouped into samples by key: `00042.jpg`,
`00042.txt`, `00042.json` are the image, the caption and the metadata of sample `00042` (the key is the
member path up to the first dot of its file name). Reading such shards in order would need a streaming
loader with its own sharding and resume rules; instead the tar headers are scanned once (no image is
read) and each sample's members are read by byte offset, so the shards behave like any map-style
source: the exact per-step task ratio, disjoint ranks and exact resume of `lit_janus.data.stream` all
hold. Local (or mounted) shards only; for object stores, convert to litdata (`lit_janus.data.optimize`).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from lit_janus.data.sources import BadRecord, Source

IMAGE_TYPES = ("jpg", "jpeg", "png", "webp")
RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
OPEN_FILES = 64  # shard files kept open per process


def expand_shards(spec: str | list[str]) -> list[Path]:
    """Shard paths from a directory (its `*.tar`), a glob (`laion/*.tar`), a WebDataset brace range
    (`laion/{00000..00099}.tar`, zero padding kept) or a list of any of these."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    m = RANGE.search(spec)
    if m:
        a, b = m.group(1), m.group(2)
        width = len(a) if a.startswith("0") else 0
        return [p for i in range(int(a), int(b) + 1)
                for p in expand_shards(spec[:m.start()] + str(i).zfill(width) + spec[m.end():])]
    if Path(spec).is_dir():
        found = sorted(Path(spec).glob("*.tar"))
    elif glob.has_magic(spec):
        found = [Path(p) for p in sorted(glob.glob(spec))]
    else:
        found = [Path(spec)] if Path(spec).is_file() else []
    if not found:
        raise FileNotFoundError(f"no tar shards found for {spec!r} (a directory of .tar files, a glob, "
                                "or a brace range such as data/{00000..00099}.tar)")
    return found


def names_shards(spec: str) -> bool:
    """Whether `spec` is written as `expand_shards` reads shards: a `.tar`, a glob, a brace range, or a
    directory holding `.tar` files."""
    p = Path(spec)
    return spec.endswith(".tar") or glob.has_magic(spec) or bool(RANGE.search(spec)) or (
        p.is_dir() and any(p.glob("*.tar")))


def _split_key(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _scan(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {extension: (data offset, size)}) of every sample of one shard, in order."""
    try:
        tf = tarfile.open(path, "r:")  # plain tar only: compressed members cannot be read by offset
    except tarfile.ReadError as e:
        raise ValueError(f"{path} is not an uncompressed tar ({e}); WebDataset shards are plain .tar files: "
                         "decompress a .tar.gz first") from None
    samples: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
    with tf:
        for member in tf:
            if member.isfile():
                key, ext = _split_key(member.name)
                samples.setdefault(key, {})[ext] = (member.offset_data, member.size)
    return list(samples.items())


class WebDatasetSource(Source):
    """WebDataset tar shards as records `{"image": <encoded bytes>, "caption": ..., "key": ...}`, one per
    sample with an image (`jpg`/`jpeg`/`png`/`webp`); the caption is the sample's `.txt`, else the
    `caption` field of its `.json` (img2dataset writes both). With `question` set, each record is also an
    understanding record (`question`, answer = the caption), for captioning data in the und stream.

    The index (a few numpy arrays, no Python object per sample) is built on first use by reading every
    shard's tar headers: one pass over the headers, not the images."""

    def __init__(self, shards: str | list[str], question: str | None = None):
        """
        Args:
            shards: a directory of `.tar` shards, a glob, a brace range (`data/{00000..00099}.tar`), or a list.
            question: make records understanding samples too: this question, the caption as the answer
                (e.g. "Describe this image in detail.").
        """
        self.shards = expand_shards(shards)
        self.question = question
        self._index: dict[str, np.ndarray] | None = None
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = None

    def _build(self) -> dict[str, np.ndarray]:
        if self._index is None:
            cols: dict[str, list] = {k: [] for k in ("shard", "image", "image_size", "txt", "txt_size", "json",
                                                     "json_size", "ext", "key")}
            for s, path in enumerate(self.shards):
                for key, parts in _scan(path):
                    ext = next((e for e in IMAGE_TYPES if e in parts), None)
                    if ext is None:
                        continue  # metadata-only samples (img2dataset's failed downloads) carry no image
                    cols["shard"].append(s)
                    cols["ext"].append(ext)
                    cols["key"].append(key.encode())
                    for name, where in (("image", parts[ext]), ("txt", parts.get("txt")), ("json", parts.get("json"))):
                        offset, size = where if where is not None else (-1, 0)
                        cols[name].append(offset)
                        cols[f"{name}_size"].append(size)
            if not cols["key"]:
                raise ValueError(f"no samples with an image ({', '.join(IMAGE_TYPES)}) in {len(self.shards)} tar "
                                 f"shard(s), e.g. {self.shards[0]}")
            self._index = {k: np.asarray(v, dtype=np.bytes_ if k in ("ext", "key") else np.int64)
                           for k, v in cols.items()}
        return self._index

    def __len__(self) -> int:
        return len(self._build()["key"])

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # handles inherited through fork share their file position
            self._files, self._pid = OrderedDict(), os.getpid()
        f = self._files.pop(shard, None) or open(self.shards[shard], "rb")
        self._files[shard] = f  # most recently used last
        if len(self._files) > OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ix = self._build()
        shard = int(ix["shard"][index])
        if ix["txt"][index] >= 0:
            caption = self._read(shard, int(ix["txt"][index]), int(ix["txt_size"][index])).decode("utf-8").strip()
        elif ix["json"][index] >= 0:
            meta = self._read(shard, int(ix["json"][index]), int(ix["json_size"][index]))
            try:
                caption = json.loads(meta).get("caption")
            except (ValueError, AttributeError):
                raise BadRecord("its .json is not a JSON object") from None
            if not isinstance(caption, str):
                raise BadRecord("no caption: no .txt, and its .json has no \"caption\" text")
        else:
            raise BadRecord("no caption: neither a .txt nor a .json member")
        record = {"image": self._read(shard, int(ix["image"][index]), int(ix["image_size"][index])),
                  "caption": caption, "key": ix["key"][index].decode()}
        if self.question is not None:
            record.update(question=self.question, answer=caption)
        return record

    def locate(self, index: int) -> str:
        ix = self._build()
        return f"{self.shards[int(ix['shard'][index])]}, sample {ix['key'][index].decode()}.{ix['ext'][index].decode()}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = OrderedDict(), None  # open files do not pickle (spawned workers)
        return state
