"""Convert a JSONL manifest (or an ImageNet-style class folder, or WebDataset tar shards) into a litdata
streaming directory.

    python -m lit_janus.data.optimize MANIFEST_OR_CLASS_DIR_OR_SHARDS OUT_DIR [--num-workers 8] [--chunk-bytes 64MB]
    python -m lit_janus.data.optimize llava_v1_5_mix665k.json data/lit/und --root IMAGES --has-image true

Each item is `{"record": JSON, "image": bytes}`: the record as in the manifest (formats in
`lit_janus.data.sources`) and the original bytes of its image file(s), so nothing is re-encoded
and the directory is self-contained (copy it to a bucket and stream it with `StreamingSource`).
Pre-extracted codes are stored inline as a list, without the record's image (training reads the
codes, never the image). Records whose images are missing or do not decode, or whose codes
file/row is unusable, are left out and counted; everything else is checked when training reads it.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from PIL import Image

from lit_janus.data.sources import ClassFolderSource, JsonlSource, Source
from lit_janus.data.tar_shards import WebDatasetSource, names_shards
from lit_janus.data.tasks import load_codes


def _image_bytes(image: Any) -> bytes:
    if not isinstance(image, (str, bytes)):
        raise ValueError(f"only image files or encoded image bytes can be stored, got {type(image).__name__}")
    data = Path(image).read_bytes() if isinstance(image, str) else image
    from io import BytesIO

    with Image.open(BytesIO(data)) as im:
        im.verify()  # header and structure, without decoding every pixel
    return data


def item(index: int, source: Source) -> dict[str, Any] | None:
    """One litdata item for `source[index]`, or None (litdata drops it) for a bad record."""
    try:
        record = dict(source[index])
        images = record.pop("images", None) or record.pop("image", None) or []
        if record.get("codes") is not None:  # training reads the codes, never the image: do not store it
            images = []
        blobs = [_image_bytes(im) for im in (images if isinstance(images, list) else [images])]
        if isinstance(record.get("codes"), str):  # inline: one self-contained item (checked as in training)
            record["codes"] = load_codes(record["codes"], record.pop("codes_row", None)).tolist()
        if blobs:
            record["_image_sizes"] = [len(b) for b in blobs]
            if len(blobs) > 1:
                record["images"] = None  # marks a multi-image record for decode_item
        record["_index"] = index  # seeds the CFG draw of this record
        return {"record": json.dumps(record, ensure_ascii=False), "image": b"".join(blobs)}
    except (OSError, ValueError) as e:
        print(f"skipping {source.locate(index)}: {e}")
        return None


def open_source(path: str, root: str | None = None, has_image: bool | None = None) -> Source:
    """Tar shards (`.tar`, a glob, a `{00000..00099}` range, or a directory of them), a class-folder root,
    or a manifest (`root` and `has_image` as for `JsonlSource`)."""
    if names_shards(path) or Path(path).is_dir():
        if root is not None or has_image is not None:
            raise ValueError("--root and --has-image apply to a manifest, not to tar shards or class folders")
        return WebDatasetSource(path) if names_shards(path) else ClassFolderSource(path)
    return JsonlSource(path, root=root, has_image=has_image)


def optimize_source(source: Source, output_dir: str, num_workers: int = 1, chunk_bytes: str = "64MB") -> int:
    """Write `source` to `output_dir`; returns the number of records written."""
    import multiprocessing

    from litdata import StreamingDataset, optimize

    if not len(source):
        raise ValueError(f"{source.locate(0).rsplit(',', 1)[0]} holds no records: nothing to convert")
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(fn=functools.partial(item, source=source), inputs=list(range(len(source))), output_dir=output_dir,
                 chunk_bytes=chunk_bytes, num_workers=num_workers, mode="overwrite", verbose=False)
    finally:
        # litdata forces the process-wide start method to spawn; a caller's DataLoaders (notebooks, tests,
        # a conversion before training) would then need picklable everything and restart slowly
        multiprocessing.set_start_method(start_method, force=True)
    try:
        return len(StreamingDataset(output_dir))
    except AssertionError as e:  # litdata: "No chunks found in the .../index.json file"
        raise ValueError(f"none of the {len(source)} records could be stored (each was skipped; the lines above "
                         f"say why): {output_dir} holds nothing") from e


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a JSONL manifest, the root of ImageNet-style class folders, or WebDataset "
                        "tar shards (a .tar, a glob, data/{00000..00099}.tar, or their directory)")
    parser.add_argument("output_dir", help="the litdata directory to write (local path or cloud URL)")
    parser.add_argument("--root", help="a manifest's image folder (default: the manifest's directory)")
    parser.add_argument("--has-image", choices=("true", "false"), help="keep only a manifest's records with "
                        "(true) or without (false) an image, e.g. LLaVA's mix split into und and text data")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--chunk-bytes", default="64MB")
    args = parser.parse_args(argv)
    source = open_source(args.source, args.root, None if args.has_image is None else args.has_image == "true")
    n = optimize_source(source, args.output_dir, args.num_workers, args.chunk_bytes)
    print(f"wrote {n} of {len(source)} records to {args.output_dir} ({len(source) - n} skipped)")


if __name__ == "__main__":
    main()
