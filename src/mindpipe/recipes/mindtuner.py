"""The ``mindtuner`` stage: pretrain on every subject but one, fine-tune on a little of the new
subject with LoRA + Skip-LoRA, and retrieve captions through the image pivot.

1. **Pretraining.** A :class:`~mindpipe.models.mindtuner.MindTuner` (per-subject input maps, a
   shared residual backbone and head) learns from the other subjects' whole training split,
   with MindEye2's multi-subject batches and loss (BiMixCo, then SoftCLIP).
2. **Fine-tuning** on the held-out subject's first trials (:mod:`mindpipe.recipes.fewshot`):
   a new input map, LoRA on every backbone/head layer and a Skip-LoRA per block, the backbone
   frozen, plus Skip-LoRA's decorrelation loss. Compared in the same run, on the same trials
   and budget: ``mindtuner_lora_only`` (no Skip-LoRA), ``mindtuner_scratch`` (the same
   network trained from scratch on those trials) and ``litemind_scratch`` (the ``litemind``
   stage's Lite-Mind, rebuilt from its saved config, trained on those trials). Every model's
   epoch is chosen on the held-out subject's validation split.
3. **fMRI -> text through the image pivot.** An adaptive projector (a linear map from the
   CLIP image space to the caption space) learns on the training images' captions; the
   fine-tuned decoder's embedding, projected, retrieves the test captions. Scored against the
   same embedding without the projector and the true image embedding with it (the ceiling).

Outputs: ``results.md``, ``plots/fewshot_curve.png``, ``models/pretrained/`` and
``models/mindtuner/`` (safetensors + config.json), ``models/pivot/``, and each model's test
predictions at ``fewshot.fraction`` under ``<model>/predictions/`` (the evaluate contract).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mindpipe.evaluate.retrieval import cosine_similarity
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import list_subjects, load_betas, load_stimuli
from mindpipe.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from mindpipe.models.litemind import LiteMind, LiteMindConfig
from mindpipe.models.losses import logits_loss
from mindpipe.models.mindtuner import MindTuner, MindTunerConfig, adapt
from mindpipe.params import BaseParams
from mindpipe.recipes import fewshot
from mindpipe.recipes.contrastive import (
    SubjectView,
    TrainConfig,
    fit_contrastive,
    fit_subjects,
    predict,
    resolve_device,
)
from mindpipe.stages import ModelCard
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

# Folder and metric names; the evaluate stage sees every decoder of every stage in one table.
MODELS = ("mindtuner", "mindtuner_lora_only", "mindtuner_scratch", "litemind_scratch")


@dataclasses.dataclass(frozen=True)
class PivotParams:
    """The adaptive projector from CLIP image embeddings to caption embeddings."""

    epochs: int = 300
    lr: float = 1e-2
    logit_scale: float = 20.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.logit_scale <= 0:
            raise ParamsError(
                "mindtuner.pivot needs epochs >= 1, lr > 0 and logit_scale > 0; got "
                f"{self.epochs}, {self.lr}, {self.logit_scale}"
            )


@dataclasses.dataclass(frozen=True)
class MindTunerParams:
    """``mindtuner:`` section. ``finetune`` is also the budget of the models trained from
    scratch on the same trials, so the comparison is the starting point alone."""

    fewshot: fewshot.FewShotParams = dataclasses.field(default_factory=fewshot.FewShotParams)
    hidden: int = 256
    n_blocks: int = 2
    dropout: float = 0.15
    lora_rank: int = 8
    lora_alpha: float = 8.0
    skip_weight: float = 1.5  # Skip-LoRA decorrelation loss weight (the lineage code's)
    pretrain: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    finetune: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    pivot: PivotParams = dataclasses.field(default_factory=PivotParams)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.lora_rank < 1 or self.lora_alpha <= 0 or self.skip_weight < 0:
            raise ParamsError(
                "mindtuner needs lora_rank >= 1, lora_alpha > 0 and skip_weight >= 0; got "
                f"{self.lora_rank}, {self.lora_alpha}, {self.skip_weight}"
            )


def litemind_config(litemind_dir: Path, subject: str) -> tuple[LiteMindConfig, str]:
    """The ``litemind`` stage's Lite-Mind config for ``subject`` and the target it decoded."""
    path = Path(litemind_dir) / "litemind" / "models" / subject / "config.json"
    if not path.is_file():
        raise DataError(f"Lite-Mind config not found: '{path}'; run the litemind stage first")
    config, raw = read_config(path, LiteMindConfig)
    return config, raw["target"]


def train_mindtuner(
    *,
    betas_dir: Path,
    features_dir: Path,
    litemind_dir: Path,
    out_dir: Path,
    params: MindTunerParams,
    base: BaseParams,
) -> dict[str, float]:
    subjects = list_subjects(betas_dir)
    if len(subjects) < 2:
        reason = f"pretraining on other subjects needs at least 2 subjects; found {subjects}"
        return fewshot.unavailable(out_dir, "mindtuner", reason)
    store = FeatureStore(features_dir)
    device = resolve_device(params.device)
    new, others = fewshot.pick_holdout(subjects, params.fewshot.holdout)
    lite_config, target = litemind_config(litemind_dir, new)
    betas = {s: load_betas(betas_dir, s) for s in [*others, new]}
    if lite_config.n_voxels != betas[new].n_voxels:
        raise DataError(
            f"the litemind stage's model of {new} reads {lite_config.n_voxels} voxels; "
            f"'{betas_dir}' has {betas[new].n_voxels}: rerun the litemind stage"
        )
    space = fewshot.target_space(store, [betas[s].stim["train"] for s in others], target)
    pairs = {s: fewshot.subject_pairs(sb, store, space, target) for s, sb in betas.items()}
    n_tokens = pairs[new]["train"][1].shape[1]
    shape = {"embed_dim": store.dim, "n_tokens": n_tokens, "hidden": params.hidden}
    shape |= {"n_blocks": params.n_blocks, "dropout": params.dropout}

    torch.manual_seed(base.seed)
    pretrained = MindTuner(
        MindTunerConfig(tuple(others), tuple(betas[s].n_voxels for s in others), **shape)
    )
    pre = fit_subjects(
        pretrained,
        {s: pairs[s]["train"] for s in others},
        {s: pairs[s]["val"] for s in others},
        params.pretrain,
        device,
        base.seed,
        report_as="pretrain.val_top1",
    )
    save_checkpoint(out_dir / "models" / "pretrained", pretrained, target=target)
    metrics = {"available": 1.0, "pretrain.val_top1": pre.val_top1}
    metrics["pretrain.best_epoch"] = pre.best_epoch

    def build(name: str) -> torch.nn.Module:
        torch.manual_seed(base.seed)
        if name == "litemind_scratch":
            return LiteMind(lite_config)
        if name == "mindtuner_scratch":
            return MindTuner(MindTunerConfig((new,), (betas[new].n_voxels,), **shape))
        return adapt(
            pretrained, new, betas[new].n_voxels, params.lora_rank, skip=name == "mindtuner"
        )

    curves: dict[str, list[float]] = {name: [] for name in MODELS}
    table: dict[str, dict[str, float]] = {}
    for fraction in progress(params.fewshot.fractions, desc="mindtuner fractions"):
        trials = fewshot.first_trials(pairs[new]["train"], fraction)
        for name in MODELS:
            model = build(name)
            frozen = model.frozen_state() if isinstance(model, MindTuner) else {}
            view, result = _fit(
                model, name, new, trials, pairs[new]["val"], params, device, base, fraction
            )
            decoded = predict(view, pairs[new]["test"][0], device)
            scores = fewshot.test_scores(decoded, pairs[new]["test"])
            curves[name].append(scores["brain_to_image"])
            if fraction != params.fewshot.fraction:
                continue
            table[name] = _summary(model, scores, result, frozen, len(trials[0]))
            fewshot.save_decoder_predictions(
                out_dir / name,
                new,
                betas[new].stim["test"],
                decoded,
                pairs[new]["test"],
                space,
                store.image_pooled(betas[new].stim["test"]),
            )
            if name == "mindtuner":
                save_checkpoint(out_dir / "models" / "mindtuner", model, target=target)
                space.save(out_dir / "models" / "mindtuner" / "target_stats.npz")
                tuned_decoded = decoded
    pivot = caption_retrieval(
        store,
        load_stimuli(betas_dir),
        train_ids=np.concatenate([betas[s].stim["train"] for s in others]),
        val_ids=betas[new].stim["val"],
        test_ids=betas[new].stim["test"],
        decoded=space.pooled(tuned_decoded),
        params=params.pivot,
        seed=base.seed,
        folder=out_dir / "models" / "pivot",
    )

    n_train = len(pairs[new]["train"][0])
    fewshot.plot_curve(
        out_dir / "plots" / "fewshot_curve.png",
        params.fewshot.fractions,
        n_train,
        curves,
        table["mindtuner"]["chance"],
        f"MindTuner: held-out {new}, others pretrained",
    )
    for name, row in table.items():
        metrics |= {f"{name}.{k}": v for k, v in row.items()}
    metrics |= fewshot.curve_metrics(curves, params.fewshot.fractions) | pivot
    _write_results(out_dir / "results.md", new, others, params, table, curves, pivot, n_train)
    logger.info("mindtuner (%s, %s of train): %s", new, params.fewshot.fraction, table)
    return metrics


def _fit(model, name, subject, trials, val, params, device, base, fraction):
    """Train one model of the comparison; returns the model as a one-subject module."""
    report_as = f"{name}.f{fraction:g}.val_top1"
    if name == "litemind_scratch":
        return model, fit_contrastive(
            model, trials, val, params.finetune, device, base.seed, report_as=report_as
        )
    weight = params.skip_weight if name == "mindtuner" else 0.0
    result = fit_subjects(
        model,
        {subject: trials},
        {subject: val},
        params.finetune,
        device,
        base.seed,
        report_as=report_as,
        regulariser_weight=weight,
    )
    return SubjectView(model, subject), result


def _summary(model, scores, result, frozen, trials) -> dict[str, float]:
    row = {
        "test_top1": scores["brain_to_image"],
        "test_image_to_brain": scores["image_to_brain"],
        "chance": scores["chance"],
        "val_top1": result.val_top1,
        "best_epoch": result.best_epoch,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trials": trials,
    }
    if frozen:  # a frozen backbone must come out of fine-tuning bit for bit unchanged
        params = dict(model.named_parameters())
        row["frozen_max_change"] = max(
            float((params[k].detach().cpu() - v.cpu()).abs().max()) for k, v in frozen.items()
        )
    return row


def fit_projector(
    image: np.ndarray,
    text: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    params: PivotParams,
    seed: int,
) -> torch.nn.Linear:
    """MindTuner's adaptive projector: ``Linear(image dim -> text dim)`` trained full-batch with
    InfoNCE in which each projected image picks its caption among the batch's; the epoch whose
    projected val images retrieve their captions best is kept."""
    torch.manual_seed(seed)
    x, y = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (image, text))
    y = torch.nn.functional.normalize(y, dim=-1)
    projector = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(projector.parameters(), lr=params.lr, weight_decay=0.01)
    best = (-1.0, None)
    for _ in range(params.epochs):
        pred = torch.nn.functional.normalize(projector(x), dim=-1)
        loss = logits_loss(params.logit_scale * pred @ y.T, symmetric=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            score = float(np.mean(_nearest(projector(torch.as_tensor(val[0])).numpy(), val[1])))
        if score > best[0]:
            best = (score, {k: v.clone() for k, v in projector.state_dict().items()})
    projector.load_state_dict(best[1])
    return projector


def _nearest(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of each query row's most similar candidate row is its own (one bool per row)."""
    return cosine_similarity(query, candidates).argmax(axis=1) == np.arange(len(query))


def caption_top1(query: np.ndarray, captions_emb: np.ndarray, captions: list[str]) -> float:
    """Share of rows whose most similar caption embedding is their own caption's text (the
    twin's captions repeat: an identical caption of another image counts as right)."""
    best = cosine_similarity(query, captions_emb).argmax(axis=1)
    return float(np.mean([captions[b] == captions[i] for i, b in enumerate(best)]))


def caption_retrieval(
    store: FeatureStore,
    stimuli,
    *,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    test_ids: np.ndarray,
    decoded: np.ndarray,
    params: PivotParams,
    seed: int,
    folder: Path,
) -> dict[str, float]:
    """fMRI -> caption retrieval among the test captions, through the image pivot."""
    train_ids = np.unique(train_ids)
    projector = fit_projector(
        store.image_pooled(train_ids),
        store.text_pooled(train_ids),
        (store.image_pooled(val_ids).astype(np.float32), store.text_pooled(val_ids)),
        params,
        seed,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in projector.state_dict().items()},
        str(folder / "model.safetensors"),
    )

    def project(emb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return projector(torch.as_tensor(np.asarray(emb, dtype=np.float32))).numpy()

    text = store.text_pooled(test_ids)
    captions = [str(c) for c in stimuli.loc[np.asarray(test_ids), "caption"]]
    true_image = store.image_pooled(test_ids)
    counts = {c: captions.count(c) for c in set(captions)}
    return {
        "pivot.caption_top1": caption_top1(project(decoded), text, captions),
        "pivot.direct_caption_top1": caption_top1(decoded, text, captions),
        "pivot.ceiling_caption_top1": caption_top1(project(true_image), text, captions),
        "pivot.ceiling_direct_caption_top1": caption_top1(true_image, text, captions),
        "pivot.chance": float(np.mean([counts[c] / len(captions) for c in captions])),
    }


def _write_results(path, new, others, params, table, curves, pivot, n_train) -> None:
    fs = params.fewshot
    columns = ("test_top1", "test_image_to_brain", "val_top1", "trainable_params", "total_params")
    lines = [
        f"# MindTuner: held-out {new}, pretrained on {', '.join(others)}",
        "",
        f"Fine-tuning data: the first {table['mindtuner']['trials']:.0f} of {new}'s {n_train} "
        f"training trials ({fs.fraction:g}); every model's epoch chosen on {new}'s val split; "
        f"test top-1 among {1 / table['mindtuner']['chance']:.0f} images (chance "
        f"{table['mindtuner']['chance']:.4f}).",
        "",
        fewshot.markdown_table(table, columns),
        "",
        "Frozen backbone after fine-tuning, largest absolute weight change: "
        f"{table['mindtuner']['frozen_max_change']:g}.",
        "",
        "## Test top-1 against fine-tuning data",
        "",
        fewshot.curve_table(curves, fs.fractions),
        "",
        "## fMRI -> caption retrieval through the image pivot",
        "",
        "| query | caption top-1 |",
        "|---|---|",
        f"| fine-tuned decoder -> projector | {pivot['pivot.caption_top1']:.3f} |",
        f"| fine-tuned decoder, no projector | {pivot['pivot.direct_caption_top1']:.3f} |",
        f"| true image -> projector (ceiling) | {pivot['pivot.ceiling_caption_top1']:.3f} |",
        f"| true image, no projector | {pivot['pivot.ceiling_direct_caption_top1']:.3f} |",
        f"| chance | {pivot['pivot.chance']:.4f} |",
    ]
    path.write_text("\n".join(lines) + "\n")


def score_saved_mindtuner(
    model_dir: Path,
    *,
    betas_dir: Path,
    features_dir: Path,
    litemind_dir: Path,
    params: MindTunerParams,
    base: BaseParams,
) -> ModelCard:
    """The fine-tuned model's validation top-1 on the held-out subject (what its epoch was
    chosen on). ``litemind_dir`` is unused: the scorer takes the stage's inputs."""
    model = load_checkpoint(Path(model_dir), MindTuner, MindTunerConfig, "MindTuner")
    subject = model.config.adapted_subject
    return fewshot.score_saved(
        model, subject, load_betas(betas_dir, subject), model_dir, features_dir, params.device
    )
