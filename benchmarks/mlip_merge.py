"""Image-encoder throughput of MLIP at several token-merging ratios (speed side of the ablation).

    .venv/bin/python benchmarks/mlip_merge.py [--config mlip-small] [--patch 8 4] [--batch 256]

The accuracy side is the ``mlip`` stage's ablation table (trained models); speed does not
depend on the weights, so here freshly built models are timed: median of ``--repeats`` forward
passes of one batch, after a warm-up, for each patch size (more patches = more tokens to merge).
Printed as images/s and as a ratio to no merging, all measured in this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from mindpipe.models.mlip import build_mlip, build_vocab, load_config


@torch.no_grad()
def images_per_second(model: torch.nn.Module, pixels: torch.Tensor, repeats: int) -> float:
    model.eval()
    model.encode_image(pixels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode_image(pixels)
        times.append(time.perf_counter() - start)
    return len(pixels) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mlip-small")
    parser.add_argument("--patch", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    base = load_config(args.config, vocab=build_vocab(["a shape"]))
    pixels = torch.randn(args.batch, 3, base.image_size, base.image_size)
    print(
        f"{args.config}, {base.image_size}px, batch {args.batch}, {torch.get_num_threads()} threads"
    )
    print(f"{'patch':>5} {'tokens':>6} {'ratio':>5} {'images/s':>9} {'speed-up':>8}")
    for patch in args.patch:
        reference = None
        for ratio in args.ratios:
            cfg = dataclasses.replace(base, patch_size=patch, merge_ratio=ratio)
            torch.manual_seed(0)
            rate = images_per_second(build_mlip(cfg), pixels, args.repeats)
            reference = reference or rate
            print(f"{patch:5d} {cfg.grid**2:6d} {ratio:5.2f} {rate:9.0f} {rate / reference:7.2f}x")


if __name__ == "__main__":
    main()
