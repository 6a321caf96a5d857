"""NeuroClips inference: seconds per clip and peak memory, on CPU (or CUDA when present).

    .venv/bin/python benchmarks/neuroclips.py [--voxels 700] [--clips 8] [--sample-steps 10]

Builds the stage's models at the pipeline's default sizes (params.yaml ``neuroclips`` and
``reconstruct``; untrained weights time the same as trained ones): Perception Reconstructor,
Semantics Reconstructor (MindEye MLP), the unCLIP keyframe generator and the video model
(AnimateDiff-style UNet + SparseCtrl-style control net, 16 frames at 32 px). Each measurement
runs in its own child process so peak RSS belongs to it alone (on CUDA, peak allocated GPU
memory). Prints per-part seconds per clip at batch 1 and at ``--clips`` per batch, the
seconds per training step of the video model, and the parameter counts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch
import yaml

from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindpipe.models.perception import PerceptionConfig, PerceptionReconstructor
from mindpipe.models.unclip import UnCLIPGenerator
from mindpipe.models.unclip import config_for as unclip_config
from mindpipe.models.video_diffusion import VideoDiffusion, config_for, parameter_counts
from mindpipe.recipes.neuroclips import expand_blurry

EMBED_DIM = 256  # mlip-small's embedding width
FRAMES, SIZE = 16, 32  # the default twin's clips: 2 s at 8 FPS, 32 px
ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    nc, rc = params["neuroclips"], params["reconstruct"]
    torch.manual_seed(0)
    return {
        "perception": PerceptionReconstructor(
            PerceptionConfig(
                args.voxels,
                out_size=nc["blurry_size"],
                hidden=nc["perception"]["hidden"],
                channels=nc["perception"]["channels"],
            )
        ),
        "semantics": MindEyeMLP(
            MindEyeMLPConfig(
                args.voxels,
                EMBED_DIM,
                hidden=nc["semantics_hidden"],
                n_blocks=nc["semantics_blocks"],
            )
        ),
        "keyframe": UnCLIPGenerator(unclip_config(rc["image_size"], EMBED_DIM, rc["config"])),
        "video": VideoDiffusion(config_for(SIZE, FRAMES, EMBED_DIM, nc["video"]["config"])),
    }


@torch.no_grad()
def infer(models: dict[str, torch.nn.Module], voxels: torch.Tensor, args) -> dict[str, float]:
    """One pass of the stage's inference; seconds spent in each part."""
    seconds = {}
    start = time.perf_counter()
    blurry = expand_blurry(models["perception"].eval()(voxels), FRAMES, SIZE)
    seconds["perception"] = time.perf_counter() - start
    start = time.perf_counter()
    embedding = models["semantics"].eval()(voxels).flatten(1)
    keyframe = models["keyframe"].sample(embedding, args.keyframe_steps)
    keyframe = torch.nn.functional.interpolate(keyframe, size=SIZE, mode="bilinear")
    seconds["semantics + keyframe"] = time.perf_counter() - start
    start = time.perf_counter()
    models["video"].eval().sample(
        embedding, keyframe, blurry, steps=args.sample_steps, strength=args.strength
    )
    seconds["video diffusion"] = time.perf_counter() - start
    return seconds


def measure(kind: str, batch: int, args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    models = {k: m.to(device) for k, m in build(args).items()}
    voxels = torch.randn(batch, args.voxels, device=device)
    if kind == "inference":
        infer(models, voxels, args)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds = infer(models, voxels, args)
    else:
        video = models["video"].train()
        opt = torch.optim.AdamW(video.parameters(), lr=1e-3)
        clips = torch.rand(batch, FRAMES, 3, SIZE, SIZE, device=device) * 2 - 1
        embedding = torch.randn(batch, EMBED_DIM, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        seconds = {}
        for step in range(3):  # one warm-up step, then two timed
            if step == 1:
                start = time.perf_counter()
            loss = video.denoising_loss(clips, embedding, clips[:, 0], clips, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds["video training step"] = (time.perf_counter() - start) / 2
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    per = batch if kind == "inference" else 1  # inference: per clip; training: per step
    queue.put((device.type, {k: v / per for k, v in seconds.items()}, peak))


def run_child(kind: str, batch: int, args: argparse.Namespace) -> tuple[str, dict, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(kind, batch, args, queue))
    proc.start()
    proc.join()  # the result is a few numbers: the queue never fills, so joining first is safe
    if proc.exitcode != 0:
        raise SystemExit(f"the {kind} measurement failed (exit code {proc.exitcode}); see above")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=700, help="default twin: ~700 per subject")
    parser.add_argument("--clips", type=int, default=8, help="clips per batch (second run)")
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--keyframe-steps", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in build(args).items()}
    video_counts = parameter_counts(build(args)["video"])
    print(f"NeuroClips inference, {FRAMES} frames at {SIZE} px, {args.threads} threads")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()))
    print("  video model: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in video_counts.items()))
    runs = [("inference", 1), ("inference", args.clips), ("training", args.train_batch)]
    for kind, batch in runs:
        device, seconds, peak = run_child(kind, batch, args)
        total = sum(seconds.values())
        parts = ", ".join(f"{k} {v:.3f}" for k, v in seconds.items())
        unit = "clip" if kind == "inference" else "step"
        print(
            f"{kind:<9} batch {batch:>3} on {device}: {total:.3f} s per {unit} ({parts}); "
            f"peak memory {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
