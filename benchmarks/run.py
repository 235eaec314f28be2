"""Run every benchmark and write benchmarks/results.json (see reversion.benchmark).

    python benchmarks/run.py            # everything, including two book builds (~10 min)
    python benchmarks/run.py --no-book  # the per-step, extraction and scaling parts (~2 min)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reversion import benchmark

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON file to write")
    p.add_argument("--no-book", action="store_true", help="skip the cold and warm book builds")
    p.add_argument("--world", default="default", help="named world (default: the book's organism)")
    p.add_argument("--repeats", type=int, default=60, help="interleaved repeats per step variant")
    a = p.parse_args()
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    res = benchmark.run(a.out, book=not a.no_book, world=a.world, repeats=a.repeats)
    print(json.dumps({k: res[k] for k in ("steps", "extraction")}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
