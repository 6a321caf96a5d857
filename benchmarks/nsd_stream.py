"""Peak memory and time of the NSD adapter and of ``preprocess`` on a realistic-size release.

Usage: ``python benchmarks/nsd_stream.py [--trials 30000] [--voxels 15724] [--dtype float32]
[--dir DIR]``. A MindEye2-layout release (betas HDF5 of ``trials x voxels``, each image shown 3
times, a tenth of the images shared for testing, 8-px images) is written in chunks under a
temporary folder, then each phase runs in a fresh process that reports its peak RSS: the
conversion (``mindpipe data import``: HDF5 row slices appended to the ``.npy``) and the
betas-route ``preprocess`` (row blocks, batches of images). The folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MINDPIPE_PROGRESS", "0")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, root: Path) -> dict[str, float]:
    """Run one phase in this process; return its time and peak RSS (after the imports)."""
    from mindpipe.io.adapters import import_dataset
    from mindpipe.params import BaseParams, SourceParams
    from mindpipe.preprocess import PreprocessParams, preprocess

    before = _rss_mib()
    start = time.perf_counter()
    if name == "import":
        params = SourceParams(image_size=8)
        import_dataset("nsd", root / "release", root / "data", params, seed=0)
    else:
        preprocess(
            data_dir=root / "data",
            out_dir=root / "preprocess",
            params=PreprocessParams(min_ncsnr=None, n_voxels=None),
            base=BaseParams(dataset="nsd"),
        )
    return {"seconds": time.perf_counter() - start, "rss_mib": _rss_mib(), "rss_before": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30_000)
    parser.add_argument("--voxels", type=int, default=15_724)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--phase", choices=("import", "preprocess"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child process: one phase, its figures on stdout
        print(json.dumps(phase(args.phase, args.root)))
        return

    from mindpipe.io.adapters.miniature import write_nsd_mindeye

    n_images = args.trials // 3
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_nsd_mindeye(
            root / "release",
            n_train=n_images - n_images // 10,
            n_test=n_images // 10,
            n_voxels=args.voxels,
            image_size=8,
            dtype=args.dtype,
        )
        size = (root / "release" / "betas_all_subj01_fp32_renorm.hdf5").stat().st_size
        print(
            f"release: {3 * n_images} trials x {args.voxels} voxels ({args.dtype}), betas file "
            f"{size / 2**20:.0f} MiB, written in {time.perf_counter() - start:.0f} s"
        )
        for name in ("import", "preprocess"):
            out = subprocess.run(
                [sys.executable, __file__, "--phase", name, "--root", str(root)],
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{name:<11} time {figures['seconds']:6.1f} s   peak RSS {figures['rss_mib']:6.0f} "
                f"MiB (imports alone {figures['rss_before']:.0f} MiB)"
            )
        converted = root / "data" / "sub-01" / "betas" / "sub-01_betas.npy"
        print(f"converted betas {converted.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
