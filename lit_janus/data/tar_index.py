"""Fill the WebDataset shard-index cache ahead of training, in parallel.

    python -m lit_janus.data.tar_index 'laion/{00000..39999}.tar' --workers 32

A 10k-sample shard takes ~1 s to scan (one CPU core, headers in the page cache), and on a cold cache every
rank of a first start scans every shard, so 40k LAION shards would keep each rank busy for hours. Run this
where training will run: the cache (`$LIT_JANUS_CACHE/tar_index`) is keyed by each shard's resolved path,
so a login node that mounts the data elsewhere, or has another cache directory, fills a cache that the
compute nodes never read.
"""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

from lit_janus.data.tar_shards import cache_dir, expand_shards, shard_index


def _index_one(path: Path) -> int:
    return len(shard_index(path, cache_dir())["key"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="directories, globs or brace ranges of .tar shards")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    shards = expand_shards(args.shards)
    with Pool(max(1, min(args.workers, len(shards)))) as pool:
        n = sum(pool.imap_unordered(_index_one, shards, chunksize=4))
    print(f"{n} samples with an image in {len(shards)} shards; index cached in {cache_dir()}")
    return n


if __name__ == "__main__":
    main()
