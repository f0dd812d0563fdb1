"""Convert a JSONL manifest (or an ImageNet-style class folder) into a litdata streaming directory.

    python -m lit_janus.data.optimize MANIFEST_OR_CLASS_DIR OUT_DIR [--num-workers 8] [--chunk-bytes 64MB]

Each item is `{"record": JSON, "image": bytes}`: the record as in the manifest (formats in
`lit_janus.data.sources`) and the original bytes of its image file(s), so nothing is re-encoded
and the directory is self-contained (copy it to a bucket and stream it with `StreamingSource`).
Pre-extracted codes are stored inline as a list. Records whose images are missing or do not
decode are left out and counted; everything else is checked when training reads it.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lit_janus.data.sources import ClassFolderSource, JsonlSource, Source


def _image_bytes(image: Any) -> bytes:
    if not isinstance(image, str):
        raise ValueError(f"only image file paths can be stored, got {type(image).__name__}")
    data = Path(image).read_bytes()
    from io import BytesIO

    with Image.open(BytesIO(data)) as im:
        im.verify()  # header and structure, without decoding every pixel
    return data


def item(index: int, source: Source) -> dict[str, Any] | None:
    """One litdata item for `source[index]`, or None (litdata drops it) for a bad record."""
    try:
        record = dict(source[index])
        images = record.pop("images", None) or ([record.pop("image")] if "image" in record else [])
        blobs = [_image_bytes(im) for im in images]
        codes = record.get("codes")
        if isinstance(codes, str):  # inline: one self-contained item
            arr = np.load(codes, mmap_mode="r")
            row = record.pop("codes_row", None)
            record["codes"] = (arr[int(row)] if row is not None else arr).reshape(-1).astype(int).tolist()
        if blobs:
            record["_image_sizes"] = [len(b) for b in blobs]
            if len(blobs) > 1:
                record["images"] = None  # marks a multi-image record for decode_item
        record["_index"] = index  # seeds the CFG draw of this record
        return {"record": json.dumps(record, ensure_ascii=False), "image": b"".join(blobs)}
    except (OSError, ValueError) as e:
        print(f"skipping {source.locate(index)}: {e}")
        return None


def open_source(path: str) -> Source:
    p = Path(path)
    return ClassFolderSource(path) if p.is_dir() else JsonlSource(path)


def optimize_source(source: Source, output_dir: str, num_workers: int = 1, chunk_bytes: str = "64MB") -> int:
    """Write `source` to `output_dir`; returns the number of records written."""
    from litdata import StreamingDataset, optimize

    optimize(fn=functools.partial(item, source=source), inputs=list(range(len(source))), output_dir=output_dir,
             chunk_bytes=chunk_bytes, num_workers=num_workers, mode="overwrite", verbose=False)
    return len(StreamingDataset(output_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a JSONL manifest, or the root of ImageNet-style class folders")
    parser.add_argument("output_dir", help="the litdata directory to write (local path or cloud URL)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--chunk-bytes", default="64MB")
    args = parser.parse_args(argv)
    source = open_source(args.source)
    n = optimize_source(source, args.output_dir, args.num_workers, args.chunk_bytes)
    print(f"wrote {n} of {len(source)} records to {args.output_dir} ({len(source) - n} skipped)")


if __name__ == "__main__":
    main()
