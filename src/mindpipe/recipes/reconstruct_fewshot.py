"""The ``reconstruct_fewshot`` stage: images from the few-data decoders (MindTuner, Wills).

The ``mindtuner`` and ``wills`` stages decode a held-out subject from its first few training
trials. Their test embeddings are rendered here by the ``reconstruct`` stage's generator, with
the sampler settings that stage saved beside it (``model/reconstruct_params.json``), so their
rows compare with its Lite-Mind row. The blurry low-level start is a ridge fitted on the *same*
first trials the decoders saw (penalty chosen on val PixCorr): a few-data decoder gets no help
from trials it was not given. Every decoder of one subject and slice shares that start, so the
differences between their images come from the decoded embeddings alone.

A separate stage, not more decoders in ``reconstruct``: NeuroClips needs only the generator,
and would otherwise wait for (and rerun after) both multi-subject stages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mindpipe.evaluate.predictions import find_decoders, load_predictions
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io import read_stimuli
from mindpipe.io.betas import SubjectBetas, load_betas
from mindpipe.io.images import load_images
from mindpipe.models.unclip import load_generator
from mindpipe.params import BaseParams
from mindpipe.recipes import fewshot
from mindpipe.recipes.contrastive import resolve_device
from mindpipe.recipes.reconstruct import (
    BLURRY,
    ReconstructParams,
    fit_blurry_decoder,
    load_saved_params,
    load_unclip_for,
    pretrained_renderer,
    score,
    small_generator_renderer,
    stimulus_thumbnails,
    to_uint8,
    write_grid,
)
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

STAGE = "reconstruct_fewshot"


@dataclasses.dataclass(frozen=True)
class ReconstructFewShotParams:
    """``reconstruct_fewshot:`` section. The sampler is the ``reconstruct`` stage's, as saved
    with its generator; only where it runs is chosen here."""

    device: str = "auto"


def fewshot_decoders(stage_dirs: dict[str, Path]) -> dict[str, tuple[str, dict, int]]:
    """``{decoder: (subject, predictions, training trials of that subject)}`` of every few-data
    stage that ran (one that recorded ``unavailable.json`` is skipped)."""
    found = {}
    for stage, folder in stage_dirs.items():
        if (Path(folder) / "unavailable.json").is_file():
            continue
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        for name, decoder_dir in find_decoders(stage, folder).items():
            preds = load_predictions(decoder_dir)
            if len(preds) != 1 or f"{name}.trials" not in metrics:
                raise DataError(
                    f"few-data decoder {name!r} in '{folder}' must predict one held-out subject "
                    f"and record '{name}.trials' in metrics.json; found {sorted(preds)}"
                )
            ((subject, arrays),) = preds.items()
            if "embedding" not in arrays:
                raise DataError(f"{name} predictions of {subject} lack the 'embedding' array")
            found[name] = (subject, arrays, int(metrics[f"{name}.trials"]))
    return found


def first_trials(sb: SubjectBetas, n: int) -> SubjectBetas:
    """``sb`` with only its first ``n`` training trials (val and test whole)."""
    return dataclasses.replace(
        sb,
        betas={**sb.betas, "train": sb.betas["train"][:n]},
        stim={**sb.stim, "train": sb.stim["train"][:n]},
    )


def reconstruct_fewshot(
    *,
    data_dir: Path,
    betas_dir: Path,
    features_dir: Path,
    reconstruct_dir: Path,
    out_dir: Path,
    params: ReconstructFewShotParams,
    base: BaseParams,
    **fewshot_dirs: Path,
) -> dict[str, float]:
    decoders = fewshot_decoders({k.removesuffix("_dir"): v for k, v in fewshot_dirs.items()})
    if not decoders:
        return fewshot.unavailable(out_dir, STAGE, "no few-data stage ran on this dataset")
    model_dir = Path(reconstruct_dir) / "model"
    rparams = load_saved_params(model_dir)
    device = resolve_device(params.device)
    stimuli = read_stimuli(data_dir)
    test = stimuli[stimuli["split"] == "test"].set_index("stim_id", drop=False)
    images = load_images(data_dir, stimuli)
    size = images.shape[1]
    thumbnails = stimulus_thumbnails(images, stimuli, rparams.image_size)
    if rparams.pretrained.unclip is None:
        generator = load_generator(model_dir).to(device)
        render = small_generator_renderer(generator, rparams, size, base.seed)
    else:
        pipe = load_unclip_for(rparams, FeatureStore(features_dir).dim, device)
        render = pretrained_renderer(pipe, rparams, size, base.seed)

    # (subject, training trials, test stim ids, uint8 images) per source, blurry starts included
    outputs: dict[str, tuple[str, int, np.ndarray, np.ndarray]] = {}
    starts: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}
    for name, (subject, arrays, n) in progress(decoders.items(), desc=STAGE):
        ids = np.asarray(arrays["stim_id"])
        key = (subject, n)
        if key not in starts:
            starts[key] = blurry_start(betas_dir, subject, n, ids, thumbnails, rparams)
            source, blurry = starts[key]
            outputs[source] = (subject, n, ids, to_uint8(blurry, size))
        outputs[name] = (subject, n, ids, render(arrays["embedding"], starts[key][1]))

    metrics: dict[str, float] = {"available": 1.0}
    rows: dict[str, tuple[str, int, dict[str, float]]] = {}
    for source, (subject, n, ids, recon) in outputs.items():
        folder = out_dir / "recon" / source
        folder.mkdir(parents=True)
        np.savez(folder / f"{subject}.npz", stim_id=ids, images=recon)
        rows[source] = (subject, n, score(recon, load_images(data_dir, test.loc[ids])))
        metrics |= {f"{source}.{k}": v for k, v in rows[source][2].items()}
        metrics[f"{source}.trials"] = n
    reference = _reference_rows(Path(reconstruct_dir), {s for s, _, _ in rows.values()})
    (out_dir / "results.md").write_text(_markdown(rows, reference, rparams))
    first_ids = next(iter(outputs.values()))[2][: rparams.grid_images]
    stacks = [load_images(data_dir, test.loc[first_ids])]
    stacks += [recon[: len(first_ids)] for *_, recon in outputs.values()]
    write_grid(out_dir / "plots" / "grid.png", stacks, labels=["stimulus", *outputs])
    return metrics


def blurry_start(betas_dir, subject, n, ids, thumbnails, rparams) -> tuple[str, np.ndarray]:
    """The blurry decoder fitted on the subject's first ``n`` trials: its source name and test
    images (rows in ``ids`` order)."""
    sb = load_betas(betas_dir, subject)
    if not np.array_equal(ids, sb.stim["test"]):
        raise DataError(
            f"few-data predictions of {subject} are not in the test order of "
            f"'{betas_dir}/{subject}': rerun the mindtuner and wills stages on these betas"
        )
    if n > len(sb.stim["train"]):
        raise ParamsError(f"{subject} has {len(sb.stim['train'])} training trials; got {n}")
    blurry, fit = fit_blurry_decoder(first_trials(sb, n), thumbnails, rparams.blurry_alphas)
    logger.info(
        "%s: blurry decoder on %s's first %d trials, alpha %g", STAGE, subject, n, fit.alpha
    )
    return f"{BLURRY}_{n}trials", blurry


def _reference_rows(reconstruct_dir: Path, subjects: set[str]) -> dict[str, dict[str, float]]:
    """The ``reconstruct`` stage's scores on the same subjects, every training trial used."""
    metrics = json.loads((reconstruct_dir / "metrics.json").read_text())
    out = {}
    for source in sorted({k.split(".")[0] for k in metrics if k.count(".") == 2}):
        for subject in sorted(subjects):
            prefix = f"{source}.{subject}."
            scores = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
            if "pixcorr" in scores:
                out[f"{source} ({subject}, every trial; reconstruct stage)"] = scores
    return out


COLUMNS = ("pixcorr", "pixcorr_shuffled", "ssim", "ssim_shuffled")


def _markdown(rows, reference, rparams: ReconstructParams) -> str:
    lines = [
        "# Reconstructions from the few-data decoders",
        "",
        "| source | subject | training trials | PixCorr | PixCorr (shuffled) | SSIM | "
        "SSIM (shuffled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (subject, n, scores) in rows.items():
        lines.append(
            f"| {name} | {subject} | {n} | "
            + " | ".join(f"{scores[c]:.3f}" for c in COLUMNS)
            + " |"
        )
    for name, scores in reference.items():
        cells = " | ".join(f"{scores[c]:.3f}" if c in scores else "—" for c in COLUMNS)
        lines.append(f"| {name} | | all | {cells} |")
    lines += [
        "",
        f"The reconstruct stage's generator, {rparams.sample_steps} DDIM steps from the blurry "
        f"start noised to {rparams.blurry_strength:g}; the blurry start is a ridge fitted on the "
        "same first trials as the decoders. *Shuffled*: each image scored against another test "
        "stimulus (the control). MindEye2's full image metrics are in the evaluate report.",
    ]
    return "\n".join(lines) + "\n"
