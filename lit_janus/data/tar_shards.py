"""WebDataset tar shards (what img2dataset writes for LAION-style caption data) as a map-style source.

A WebDataset shard is a plain tar whose members are grouped into samples by key: `00042.jpg`,
`00042.txt`, `00042.json` are the image, the caption and the metadata of sample `00042` (the key is the
member path up to the first dot of its file name). Reading such shards in order would need a streaming
loader with its own sharding and resume rules; instead the tar headers are scanned once (no image is
read) and each sample's members are read by byte offset, so the shards behave like any map-style
source: the exact per-step task ratio, disjoint ranks and exact resume of `lit_janus.data.stream` all
hold. Local (or mounted) shards only; for object stores, convert to litdata (`lit_janus.data.optimize`).

Each shard's index is cached (`$LIT_JANUS_CACHE/tar_index`, default `~/.cache/lit_janus`), keyed by the
shard's path, size, times and inode and the index format: scanning 10k-sample shards means ~30k header reads each, which
every rank of every restart would otherwise repeat. On a cold cache every rank scans every shard: fill
it ahead of a large run, in parallel, with `python -m lit_janus.data.tar_index` (see there).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from lit_janus.data.sources import BadRecord, Source
from lit_janus.predict.writers import atomic_write

log = logging.getLogger(__name__)

IMAGE_TYPES = ("jpg", "jpeg", "png", "webp")
RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
OPEN_FILES = 64  # shard files kept open per process
# one shard's index: per sample with an image, its key, image type (an index into IMAGE_TYPES), and each
# member's data offset and size in the tar (-1 and 0 where the sample has no such member)
COLUMNS = ("key", "ext", "image", "image_size", "txt", "txt_size", "json", "json_size")
INDEX_FORMAT = 1  # bump when COLUMNS or their meaning change: older cached indexes are then rescanned


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


def _scan(path: Path) -> dict[str, np.ndarray]:
    """The index of one shard (`COLUMNS`), its samples in tar order."""
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
    cols: dict[str, list] = {k: [] for k in COLUMNS}
    for key, parts in samples.items():
        ext = next((e for e in IMAGE_TYPES if e in parts), None)
        if ext is None:
            continue  # metadata-only samples (img2dataset's failed downloads) carry no image
        cols["key"].append(key.encode())
        cols["ext"].append(IMAGE_TYPES.index(ext))
        for name, where in (("image", parts[ext]), ("txt", parts.get("txt")), ("json", parts.get("json"))):
            offset, size = where if where is not None else (-1, 0)
            cols[name].append(offset)
            cols[f"{name}_size"].append(size)
    dtypes = {"key": np.bytes_, "ext": np.uint8, "image": np.int64, "txt": np.int64, "json": np.int64}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.int32)) for k, v in cols.items()}  # sizes: int32


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: given a name without .npz, numpy would add one
        np.savez_compressed(f, **arrays)  # ~10x smaller: a 10k-sample shard's index is ~70 KB, not ~600


def cache_dir() -> Path:
    return Path(os.environ.get("LIT_JANUS_CACHE", "~/.cache/lit_janus")).expanduser() / "tar_index"


def shard_index(path: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """`_scan(path)`, read from `cache` when this shard (same path, size, times and inode) was scanned before."""
    if cache is None:
        return _scan(path)
    st = path.stat()
    # what the index says depends on the shard (path, size, times, inode) and on this code (its format)
    key = f"{INDEX_FORMAT}|{','.join(IMAGE_TYPES)}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    cached = cache / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"
    try:
        with np.load(cached, allow_pickle=False) as z:
            if set(z.files) == set(COLUMNS):
                return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or broken: scan again
        pass
    index = _scan(path)
    try:  # a read-only or full cache only costs the next start a rescan
        atomic_write(cached, lambda tmp: _save_npz(tmp, index))
    except OSError as e:
        log.warning("could not cache the index of %s in %s: %s", path, cache, e)
    return index


class WebDatasetSource(Source):
    """WebDataset tar shards as records `{"image": <encoded bytes>, "caption": ..., "key": ...}`, one per
    sample with an image (`jpg`/`jpeg`/`png`/`webp`); the caption is the sample's `.txt`, else the
    `caption` field of its `.json` (img2dataset writes both). With `question` set, each record is also an
    understanding record (`question`, answer = the caption), for captioning data in the und stream.

    The index (a few numpy arrays, no Python object per sample) is built on first use from every shard's
    tar headers (one pass over the headers, not the images), or from the cache of an earlier start."""

    def __init__(self, shards: str | list[str], question: str | None = None, cache_index: bool = True):
        """
        Args:
            shards: a directory of `.tar` shards, a glob, a brace range (`data/{00000..00099}.tar`), or a list.
            question: make records understanding samples too: this question, the caption as the answer
                (e.g. "Describe this image in detail.").
            cache_index: keep each shard's index in `$LIT_JANUS_CACHE/tar_index` (default `~/.cache/lit_janus`)
                for the next start; false: scan the tar headers every time.
        """
        self.shards = expand_shards(shards)
        self.question = question
        self.cache_index = cache_index
        self._index: dict[str, np.ndarray] | None = None
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = None

    def _build(self) -> dict[str, np.ndarray]:
        if self._index is None:
            cache = cache_dir() if self.cache_index else None
            if len(self.shards) > 100:
                log.info("indexing %d tar shards%s", len(self.shards), f" (cached in {cache})" if cache else "")
            parts = [shard_index(path, cache) for path in self.shards]
            if not sum(len(p["key"]) for p in parts):
                raise ValueError(f"no samples with an image ({', '.join(IMAGE_TYPES)}) in {len(self.shards)} tar "
                                 f"shard(s), e.g. {self.shards[0]}")
            index = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # keys: the widest width
            index["shard"] = np.concatenate([np.full(len(p["key"]), s, np.int32) for s, p in enumerate(parts)])
            self._index = index
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
        return f"{self.shards[int(ix['shard'][index])]}, sample {ix['key'][index].decode()}.{IMAGE_TYPES[ix['ext'][index]]}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = OrderedDict(), None  # open files do not pickle (spawned workers)
        return state
