"""Peak RSS and time of the NSD betas adapter on a realistic-size synthetic HDF5.

Usage: ``python benchmarks/nsd_stream.py [--trials 30000] [--voxels 15724] [--dir DIR]``.
The file is written in chunks so generating it does not itself need the whole array in memory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from mindpipe.io.adapters import get_adapter


def write_betas(path: Path, n_trials: int, n_voxels: int, chunk: int = 1000) -> np.ndarray:
    """float16 betas, 3 repeats per image; returns the image id of each trial."""
    rng = np.random.default_rng(0)
    trial_stim = rng.permutation(np.repeat(np.arange(n_trials // 3), 3))
    with h5py.File(path, "w") as handle:
        data = handle.create_dataset(
            "betas", shape=(trial_stim.size, n_voxels), dtype=np.float16, chunks=(64, n_voxels)
        )
        for start in range(0, trial_stim.size, chunk):
            stop = min(start + chunk, trial_stim.size)
            data[start:stop] = rng.normal(size=(stop - start, n_voxels)).astype(np.float16)
    return trial_stim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30_000)
    parser.add_argument("--voxels", type=int, default=15_724)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        h5 = Path(tmp) / "betas.h5"
        trial_stim = write_betas(h5, args.trials, args.voxels)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        metrics = get_adapter("nsd")(
            betas_h5=h5,
            trial_stim=trial_stim,
            test_ids=np.arange(min(1000, trial_stim.max() // 10)),
            out_dir=Path(tmp) / "out",
            subject="sub-01",
            n_val=min(300, trial_stim.max() // 10),
            seed=0,
        )
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = h5.stat().st_size / 2**20
    print(
        f"trials={args.trials} voxels={args.voxels} file={size_mb:.0f} MiB "
        f"time={seconds:.1f}s peak_rss={rss:.0f} MiB (before adapter {rss_before:.0f} MiB) "
        f"splits={ {k: int(v) for k, v in metrics.items() if k.startswith('n_')} }"
    )


if __name__ == "__main__":
    main()
