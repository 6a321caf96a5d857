"""The ``evaluate`` stage: score every decoder the same way and compare them to the oracle."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from mindpipe.evaluate.extractors import SPECS
from mindpipe.evaluate.predictions import find_decoders, load_predictions
from mindpipe.evaluate.reconstructions import DISTANCE, ReconstructionScorer, load_reconstructions
from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io import read_stimuli
from mindpipe.params import BaseParams
from mindpipe.utils import write_json

logger = logging.getLogger(__name__)

DIRECTIONS = ("brain_to_image", "image_to_brain")
TITLES = {"brain_to_image": "brain → image", "image_to_brain": "image → brain"}
SHUFFLED = "_shuffled"  # suffix of a source's shuffled-pair control (MLflow allows no brackets)


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """``evaluate:`` section: MindEye2's protocol by default (30 batches of 300, seed 42)."""

    retrieval_batch: int = 300
    retrieval_repeats: int = 30
    retrieval_seed: int = 42
    image_extractors: tuple[str, ...] = ("alexnet2", "alexnet5")
    extractor_weights_dir: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.retrieval_batch < 2 or self.retrieval_repeats < 1:
            raise ParamsError(
                "evaluate.retrieval_batch must be >= 2 and evaluate.retrieval_repeats >= 1; "
                f"got {self.retrieval_batch}, {self.retrieval_repeats}"
            )
        unknown = sorted(set(self.image_extractors) - set(SPECS))
        if unknown:
            raise ParamsError(
                f"evaluate.image_extractors: unknown {unknown}; choose from {sorted(SPECS)}"
            )


def evaluate(
    *,
    data_dir: Path,
    features_dir: Path,
    out_dir: Path,
    params: EvaluateParams,
    base: BaseParams,
    reconstruct_dir: Path | None = None,
    reconstruct_fewshot_dir: Path | None = None,
    **stage_dirs: Path,
) -> dict[str, float]:
    """Retrieval (and zero-shot) for each decoder and subject, means, and ratios to the oracle.

    ``stage_dirs`` maps ``<stage>_dir`` to the output folder of each decoder stage the registry
    wires in; every decoder found there (see ``find_decoders``) is scored the same way.
    Decoders whose embeddings live in the cached CLIP space are also scored on zero-shot
    classification of the held-out categories' test images against the category prompts.
    The reconstructions of both reconstruct stages get MindEye2's image metrics.
    """
    decoders: dict[str, Path] = {}
    for key, folder in stage_dirs.items():
        if not (Path(folder) / "unavailable.json").is_file():  # e.g. one-subject datasets
            decoders |= find_decoders(key.removesuffix("_dir"), folder)
    zero_shot = ZeroShot(read_stimuli(data_dir), FeatureStore(features_dir))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, folder in decoders.items():
        predictions = load_predictions(folder)
        if not predictions and name != "oracle":  # the oracle is empty on real data
            raise DataError(f"decoder {name!r} wrote no predictions under '{folder}/predictions'")
        results[name] = {
            subject: retrieval_top1(
                arrays["similarity"],
                params.retrieval_batch,
                params.retrieval_repeats,
                params.retrieval_seed,
            )
            | zero_shot.score(arrays)
            for subject, arrays in predictions.items()
        }
    metrics = _summarise(results)
    images: dict[str, dict[str, dict[str, float]]] = {}
    recon_dirs = [
        Path(folder) / "recon"
        for folder in (reconstruct_dir, reconstruct_fewshot_dir)
        if folder is not None and not (Path(folder) / "unavailable.json").is_file()
    ]
    if recon_dirs:
        images, pretrained = score_reconstructions(data_dir, recon_dirs, params)
        metrics |= _image_summary(images, pretrained)
    write_json(out_dir / "results.json", {"retrieval": results, "images": images})
    report = _markdown(metrics, results) + _image_markdown(metrics, images)
    (out_dir / "report.md").write_text(report)
    _plot(results, out_dir / "plots" / "retrieval.png")
    return metrics


def score_reconstructions(
    data_dir: Path, recon_dirs: list[Path], params: EvaluateParams
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, bool]]:
    """Image metrics per source (decoder, or the true-embedding ceiling) and subject."""
    from mindpipe.recipes.contrastive import resolve_device

    weights = params.extractor_weights_dir
    scorer = ReconstructionScorer(
        data_dir,
        params.image_extractors,
        Path(weights) if weights else None,
        str(resolve_device(params.device)),
    )
    scores: dict[str, dict[str, dict[str, float]]] = {}
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for folder in recon_dirs:
        for source, per in load_reconstructions(folder).items():
            if source in found:
                raise DataError(f"two reconstruct stages wrote the source {source!r}")
            found[source] = per
    for source, per in found.items():
        # A metric means something where the source beats its shuffled-pair control.
        scores[source], scores[f"{source}{SHUFFLED}"] = {}, {}
        for subject, arrays in per.items():
            paired, control = scorer.score(arrays["stim_id"], arrays["images"])
            scores[source][subject] = paired
            scores[f"{source}{SHUFFLED}"][subject] = control
    return scores, scorer.pretrained


def _image_summary(
    images: dict[str, dict[str, dict[str, float]]], pretrained: dict[str, bool]
) -> dict[str, float]:
    metrics = {f"image_metrics.pretrained.{n}": float(p) for n, p in pretrained.items()}
    for source, per_subject in images.items():
        for key in next(iter(per_subject.values())):
            values = [r[key] for r in per_subject.values()]
            metrics[f"recon.{source}.{key}"] = float(np.mean(values))
    return metrics


IMAGE_COLUMNS = {
    "pixcorr": "PixCorr ↑",
    "ssim": "SSIM ↑",
    "alexnet2": "AlexNet(2) ↑",
    "alexnet5": "AlexNet(5) ↑",
    "inception": "Inception ↑",
    "effnet": "EffNet-B1 ↓",
    "swav": "SwAV ↓",
}


def _image_markdown(metrics: dict[str, float], images: dict) -> str:
    """Reconstruction table: one row per source, MindEye2's columns that were computed; a
    source scored on fewer subjects than the others names them."""
    sources = sorted({k.split(".")[1] for k in metrics if k.startswith("recon.")})
    sources = [k for k in sources if not k.endswith(SHUFFLED)]
    if not sources:
        return ""
    keys = [k for k in IMAGE_COLUMNS if f"recon.{sources[0]}.{k}" in metrics]
    lines = [
        "",
        "# Reconstructions (MindEye2's image metrics)",
        "",
        "| source | " + " | ".join(IMAGE_COLUMNS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    everyone = max((set(per) for per in images.values()), key=len)
    for source in (name for s in sources for name in (s, f"{s}{SHUFFLED}")):
        cells = " | ".join(f"{metrics[f'recon.{source}.{k}']:.3f}" for k in keys)
        label = source.removesuffix(SHUFFLED)
        if set(images[source]) not in (everyone, {"all"}):  # "all": the ceiling's test order
            label += f" ({', '.join(images[source])})"
        label += " (shuffled)" if source.endswith(SHUFFLED) else ""
        lines.append(f"| {label} | {cells} |")
    fallback = sorted(
        k.rsplit(".", 1)[1]
        for k, v in metrics.items()
        if k.startswith("image_metrics.pretrained.") and not v
    )
    lines += [
        "",
        "PixCorr (RGB) and SSIM (grayscale) at 425 px, as MindEye2; *shuffled*: each "
        "reconstruction scored against the previous test stimulus (the control). Two-way "
        f"identification: chance 0.5; {', '.join(DISTANCE)}: correlation distance.",
    ]
    if fallback:
        lines.append(
            f"No local weights for {', '.join(fallback)}: seed-0 random networks were used, "
            "so those columns rank reconstructions but are not comparable with published ones."
        )
    return "\n".join(lines) + "\n"


class ZeroShot:
    """Classify decoded CLIP embeddings of held-out-category test images by prompt similarity.

    Two protocols: among the held-out categories only (``zero_shot_novel_*``: GOD's, where the
    50 test categories are the candidates) and among every category (``zero_shot_*``: the
    generalised one, where the seen categories compete too).
    """

    def __init__(self, stimuli, store: FeatureStore) -> None:
        self.category = dict(zip(stimuli["stim_id"], stimuli["category"], strict=True))
        self.held_out = set(stimuli.loc[stimuli["held_out"] == 1, "stim_id"])
        self.prompts = store.prompt_pooled()
        self.names = np.array(store.categories)
        self.novel = np.isin(self.names, stimuli.loc[stimuli["held_out"] == 1, "category"])

    def score(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Top-1 and chance of both protocols, or nothing when the decoder is not in CLIP space."""
        embedding = arrays.get("embedding")
        if embedding is None or embedding.shape[1] != self.prompts.shape[1]:
            return {}
        rows = [i for i, s in enumerate(arrays["stim_id"]) if s in self.held_out]
        if not rows:
            return {}
        similarity = cosine_similarity(embedding[rows], self.prompts)
        truth = np.array([self.category[s] for s in arrays["stim_id"][rows]])
        novel = self.names[self.novel][similarity[:, self.novel].argmax(axis=1)]
        return {
            "zero_shot_top1": float(np.mean(self.names[similarity.argmax(axis=1)] == truth)),
            "zero_shot_chance": 1 / len(self.names),
            "zero_shot_novel_top1": float(np.mean(novel == truth)),
            "zero_shot_novel_chance": 1 / int(self.novel.sum()),
        }


def _summarise(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, per_subject in results.items():
        if not per_subject:
            continue
        keys = [k for k in next(iter(per_subject.values())) if k != "batch_size"]
        for key in keys:
            metrics[f"{name}.{key}"] = float(np.mean([r[key] for r in per_subject.values()]))
        for subject, r in per_subject.items():
            for key in keys:
                if "chance" not in key:
                    metrics[f"{name}.{subject}.{key}"] = r[key]
    if results.get("oracle"):
        for name in results:
            if name == "oracle" or not results[name]:
                continue
            # against the oracle on the decoder's own subjects (few-data decoders have one)
            subjects = [s for s in results[name] if s in results["oracle"]] or results["oracle"]
            for direction in DIRECTIONS:
                oracle = float(np.mean([results["oracle"][s][direction] for s in subjects]))
                metrics[f"{name}.oracle_ratio.{direction}"] = (
                    metrics[f"{name}.{direction}"] / oracle if oracle > 0 else 0.0
                )
    return metrics


def _markdown(metrics: dict[str, float], results: dict) -> str:
    lines = [
        "# Top-1 retrieval (fraction correct)",
        "",
        "| decoder | brain→image | image→brain | ratio to oracle (brain→image) | chance | "
        "zero-shot top-1 among held-out categories (GOD) | zero-shot top-1 among all |",
        "|---|---|---|---|---|---|---|",
    ]
    everyone = max((set(per) for per in results.values()), key=len)
    for name, per_subject in results.items():
        if not per_subject:
            continue
        ratio = metrics.get(f"{name}.oracle_ratio.brain_to_image")
        label = name if set(per_subject) == everyone else f"{name} ({', '.join(per_subject)})"
        lines.append(
            f"| {label} | {metrics[f'{name}.brain_to_image']:.3f} | "
            f"{metrics[f'{name}.image_to_brain']:.3f} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {metrics[f'{name}.chance']:.4f} | "
            f"{_zero_shot_cell(metrics, f'{name}.zero_shot_novel')} | "
            f"{_zero_shot_cell(metrics, f'{name}.zero_shot')} |"
        )
    batch = next(iter(next(iter(results.values())).values()))["batch_size"]
    lines += [
        "",
        f"Candidates per batch: {int(batch)}; means over subjects (the subjects in brackets "
        "where a decoder has fewer: the few-data models are scored on their held-out subject).",
    ]
    return "\n".join(lines) + "\n"


def _zero_shot_cell(metrics: dict[str, float], prefix: str) -> str:
    if f"{prefix}_top1" not in metrics:
        return "—"
    return f"{metrics[f'{prefix}_top1']:.3f} (chance {metrics[f'{prefix}_chance']:.3f})"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n in results if results[n]]
    subjects = sorted({s for n in names for s in results[n]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    width = 0.8 / max(len(names), 1)
    for ax, direction in zip(axes, DIRECTIONS, strict=True):
        for k, name in enumerate(names):
            values = [results[name].get(s, {}).get(direction, np.nan) for s in subjects]
            ax.bar(np.arange(len(subjects)) + k * width, values, width, label=name)
        chance = next(iter(results[names[0]].values()))["chance"]
        ax.axhline(chance, color="k", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(np.arange(len(subjects)) + width * (len(names) - 1) / 2, subjects)
        ax.set_title(TITLES[direction])
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("top-1 retrieval")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
