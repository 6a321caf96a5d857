"""Lite-Mind vs MindEye's MLP: parameters, training throughput and peak memory.

    .venv/bin/python benchmarks/litemind.py [--voxels 15724] [--steps 20] [--batch 64]
        [--results artifacts/evaluate/results.json]

Parameter counts at the papers' size (subj01: 15,724 voxels, 257 x 768 CLIP tokens) are taken
on the meta device (no memory). Throughput and peak memory are measured at the size given by
the flags, each model trained in its own child process so peak RSS belongs to it alone (on
CUDA, peak allocated GPU memory instead). Both models use the same InfoNCE loss and AdamW.
When the main job's evaluate results exist, their top-1 retrieval (brain -> image, mean over
subjects) is printed beside the parameter ratio, as a fraction of the oracle's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mindpipe.models.litemind import LiteMind, LiteMindConfig
from mindpipe.models.losses import info_nce
from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig


def paper_models(n_voxels: int, tokens: int, dim: int) -> dict[str, torch.nn.Module]:
    return {
        "litemind": LiteMind(
            LiteMindConfig(
                n_voxels=n_voxels,
                embed_dim=dim,
                n_tokens=tokens,
                patch_size=450,
                widths=(512, 256, 128, 257),
                depths=(2, 10, 2, 4),
            )
        ),
        "mindeye_mlp": MindEyeMLP(
            MindEyeMLPConfig(n_voxels, dim, n_tokens=tokens, hidden=4096, n_blocks=4)
        ),
    }


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_steps(name: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = paper_models(args.voxels, args.tokens, args.dim)[name].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.voxels, device=device)
    y = torch.randn(args.batch, args.tokens, args.dim, device=device)
    for step in range(args.steps + 2):
        if step == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        loss = info_nce(model(x), y, 20.0, symmetric=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    elapsed = time.perf_counter() - start
    queue.put((name, args.steps * args.batch / elapsed, peak_mb, device.type))


def print_retrieval(results: Path) -> None:
    """Top-1 brain -> image of each decoder in the main job's results, and its oracle ratio."""
    if not results.exists():
        print(f"no '{results}': run `make run` for the retrieval figures")
        return
    retrieval = json.loads(results.read_text())["retrieval"]

    def mean_top1(decoder: str) -> float:
        return float(np.mean([s["brain_to_image"] for s in retrieval[decoder].values()]))

    oracle = mean_top1("oracle")
    print(f"top-1 brain -> image among 300 ('{results}'; oracle {oracle:.3f}):")
    for decoder in sorted(set(retrieval) - {"oracle"}):
        top1 = mean_top1(decoder)
        print(f"  {decoder:12s} {top1:.3f}   {top1 / oracle:.2f} x oracle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=15724)
    parser.add_argument("--tokens", type=int, default=257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("artifacts/evaluate/results.json"))
    args = parser.parse_args()

    with torch.device("meta"):
        counts = {k: n_params(m) for k, m in paper_models(15724, 257, 768).items()}
    print("parameters at paper size (subj01, 15,724 voxels -> 257 x 768 tokens):")
    for name, count in counts.items():
        print(f"  {name:12s} {count / 1e6:10.2f} M")
    ratio = counts["litemind"] / counts["mindeye_mlp"]
    print(f"  Lite-Mind / MLP = {ratio:.4f} ({100 * (1 - ratio):.1f}% fewer)")
    print_retrieval(args.results)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    results = {}
    for name in ("litemind", "mindeye_mlp"):
        proc = ctx.Process(target=train_steps, args=(name, args, queue))
        proc.start()
        result = queue.get()
        proc.join()
        results[name] = result
    print(
        f"training, {args.voxels} voxels -> {args.tokens} x {args.dim}, batch {args.batch}, "
        f"{args.steps} steps, device {results['litemind'][3]}:"
    )
    for name, (_, rate, peak, _) in results.items():
        print(f"  {name:12s} {rate:8.1f} samples/s   peak memory {peak:8.0f} MB")
    lite, mlp = results["litemind"], results["mindeye_mlp"]
    speed, memory = lite[1] / mlp[1], lite[2] / mlp[2]
    print(f"  Lite-Mind / MLP: throughput x{speed:.2f}, peak memory x{memory:.2f}")


if __name__ == "__main__":
    main()
