"""Time of the rank-confidence bootstrap (`analysis.confidence.bootstrap`) at the demo's scale: 61 variants x 2 data
sets (122 runs), 12 settings each (24 ranking settings), 200 samples per setting with 64-dim features, B = 1000.
Synthetic evidence of that shape (`tests/synthetic_evidence.py`). `python benchmarks/bench_bootstrap.py [B]`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.confidence import bootstrap  # noqa: E402
from tests.synthetic_evidence import synthetic  # noqa: E402

SETTINGS = [(w, s, c) for w in ("ema", "raw") for s, c in ((5, 1.0), (10, 1.0), (25, 1.0), (5, 5.0), (10, 5.0),
                                                            (25, 5.0))]


def main(b: int = 1000) -> None:
    quality = {f"v{i:02d}": i / 61 for i in range(61)}
    df, banks = synthetic(quality, n=200, d=64, datasets=("colour_digits", "shapes"), settings=SETTINGS)
    t0 = time.perf_counter()
    c = bootstrap(df, banks, b=b)
    took = time.perf_counter() - t0
    print(f"bootstrap: {df['run_dir'].nunique()} runs x {len(SETTINGS)} settings ({len(df)} rows), 200 samples, "
          f"d=64, B={b}: {took:.1f} s; {len(c.variants)} variants ranked")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
