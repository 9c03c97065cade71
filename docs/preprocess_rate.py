"""How long `make weights` spends preprocessing (SCRFD detection, alignment, crops: training/cache.py), measured on
a random sample of each dataset's photos in a fresh cache folder and scaled to the whole set (docs/results.md,
"Training on the 2-core CPU").

    AGEGENDER_CACHE=$(mktemp -d) .venv/bin/python docs/preprocess_rate.py aaf=../shared/data/aaf \
        utkface=../shared/data/utkface_aligned fgnet=../shared/data/fgnet fairface=FAIRFACE [--n 1500]

AGEGENDER_CACHE must name an empty folder: a cache that already holds the sample is read, not built. The crops
are made at the shipped weights' crop scale (2.2) with the preprocessing's own two worker processes. A one-off
measurement, not part of the package.
"""
import argparse
import os
import random
import time
from pathlib import Path

from training.cache import load_or_build
from training.datasets import load_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", metavar="DATASET=ROOT")
    parser.add_argument("--n", type=int, default=1500, help="photos sampled per dataset")
    args = parser.parse_args()
    cache = Path(os.environ.get("AGEGENDER_CACHE", ""))
    if not os.environ.get("AGEGENDER_CACHE") or (cache / "preprocessed").exists():
        parser.error("set AGEGENDER_CACHE to an empty folder (a filled cache is read, not built)")
    total_minutes = 0.0
    for item in args.sets:
        name, _, root = item.partition("=")
        records, _ = load_records(name, root)
        sample = random.Random(0).sample(records, min(args.n, len(records)))
        started = time.time()
        load_or_build(name, root, sample, crop_scale=2.2, progress=False)
        rate = len(sample) / (time.time() - started)
        minutes = len(records) / rate / 60
        total_minutes += minutes
        print(f"{name}: {len(sample)} of {len(records)} photos in {len(sample) / rate:.1f} s, {rate:.1f} photos/s; "
              f"all of them: {minutes:.1f} min", flush=True)
    print(f"all sets: {total_minutes:.1f} min")


if __name__ == "__main__":  # the preprocessing's worker processes re-import this file
    main()
