"""The ``mlip`` stage: pretrain the project's CLIP, and the MLIP ablation in the same run.

Pretraining data: on the twin, image-caption pairs drawn from the twin's generator (every
category, like web data covering concepts the fMRI experiment holds out); on real data, the
stimuli's training pairs. The stimuli's validation split selects the epoch (image-text
retrieval); the test split is touched once, to report:

* zero-shot top-1 on held-out-category test images (prompt per category, all categories as
  candidates; chance 1/n_categories), and on all test images;
* image -> text and text -> image top-1 retrieval among the test pairs (a caption counts as
  right when its text equals the true one: the grammar repeats captions);
* images/s of the image encoder (batch 256, no grad, this machine);

and the validation image-text retrieval the epoch was selected on (more pairs than the test's
held-out subset, so the steadier accuracy side of the merging trade-off).

Variants trained at the same budget (epochs x corpus): plain CLIP, MLIP at each merge ratio in
``ablation_ratios``. The model at ``merge_ratio`` is saved to ``model/`` (safetensors + config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mindpipe.exceptions import ParamsError
from mindpipe.features.prompts import category_embeddings, check_templates, prompt_texts
from mindpipe.io import read_stimuli
from mindpipe.io.images import load_images
from mindpipe.models.losses import info_nce, token_alignment_loss
from mindpipe.models.mlip import (
    MLIP,
    build_mlip,
    build_vocab,
    load_config,
    load_mlip,
    preprocess_images,
    save_mlip,
    tokenize,
)
from mindpipe.params import BaseParams
from mindpipe.recipes.contrastive import resolve_device
from mindpipe.reporting import report
from mindpipe.stages import ModelCard
from mindpipe.utils import progress

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MLIPParams:
    """``mlip:`` section."""

    config: str = "mlip-small"
    corpus_size: int = 3000
    caption_detail: float = 1.0  # twin corpus: chance each non-shape word stays in a caption
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    frequency_weight: float = 0.5
    token_weight: float = 0.5
    token_group: int = 32
    merge_ratio: float = 0.25
    ablation_ratios: tuple[float, ...] = (0.0, 0.5, 0.75, 0.95)
    prompts: tuple[str, ...] = ("a {}",)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.corpus_size < 0:
            raise ParamsError("mlip.epochs >= 1, mlip.batch_size >= 2, mlip.corpus_size >= 0")
        if not 0.0 < self.caption_detail <= 1.0:
            raise ParamsError(f"mlip.caption_detail must be in (0, 1]; got {self.caption_detail}")
        check_templates(self.prompts, "mlip")


@dataclasses.dataclass
class Pairs:
    pixels: torch.Tensor
    tokens: torch.Tensor
    captions: list[str]
    categories: list[str]


def pretrain_mlip(
    *, data_dir: Path, out_dir: Path, params: MLIPParams, base: BaseParams
) -> dict[str, float]:
    device = resolve_device(params.device)
    stimuli = read_stimuli(data_dir)
    corpus_table, corpus_images = pretraining_corpus(data_dir, stimuli, params, base)
    categories = sorted(stimuli["category"].unique())
    vocab = build_vocab([*corpus_table["caption"], *prompt_texts(categories, params.prompts)])
    image_size = load_images(data_dir, stimuli.iloc[:1]).shape[1]
    base_cfg = load_config(params.config, vocab=vocab, image_size=image_size)
    train = _pairs(corpus_images, corpus_table, base_cfg)
    split = {s: stimuli[stimuli["split"] == s] for s in ("val", "test")}
    evals = {s: _pairs(load_images(data_dir, t), t, base_cfg) for s, t in split.items()}
    held_out = split["test"]["held_out"].to_numpy(bool)

    variants = {"clip": dataclasses.replace(base_cfg, frequency_view=False)}
    for ratio in sorted({*params.ablation_ratios, params.merge_ratio}):
        variants[f"mlip_r{ratio:g}"] = dataclasses.replace(base_cfg, merge_ratio=ratio)
    metrics: dict[str, float] = {}
    rows = []
    for name, cfg in variants.items():
        torch.manual_seed(base.seed)
        model = build_mlip(cfg).to(device)
        weights = (0.0, 0.0) if name == "clip" else (params.frequency_weight, params.token_weight)
        best_epoch, seconds = train_model(
            model,
            train,
            evals["val"],
            params,
            weights,
            base.seed,
            report_as=f"{name}.val_retrieval_top1",
        )
        scores = evaluate_model(model, evals["test"], params.prompts, categories, held_out)
        scores["val_retrieval_top1"] = val_retrieval(model, evals["val"])
        scores |= {"best_epoch": best_epoch, "train_seconds": seconds}
        scores["images_per_s"] = throughput(model, evals["test"].pixels)
        # zero-shot is NaN without held-out categories (most real datasets): table only
        metrics |= {f"{name}.{k}": v for k, v in scores.items() if np.isfinite(v)}
        rows.append({"variant": name, "merge_ratio": cfg.merge_ratio, **scores})
        if name == f"mlip_r{params.merge_ratio:g}":
            save_mlip(model, out_dir / "model")
        logger.info("%s: %s", name, {k: round(v, 3) for k, v in scores.items()})
    table = pd.DataFrame(rows)
    (out_dir / "ablation.md").write_text(_markdown(table, len(categories)))
    _plot(table, out_dir / "plots" / "ablation.png", 1 / len(categories))
    metrics["chance.zero_shot"] = 1 / len(categories)
    return metrics


def score_saved_model(
    model_dir: Path, *, data_dir: Path, params: MLIPParams, base: BaseParams
) -> ModelCard:
    """The saved model's validation image-text retrieval: the score its epoch was chosen on."""
    model = load_mlip(model_dir, resolve_device(params.device))
    stimuli = read_stimuli(data_dir)
    val = stimuli[stimuli["split"] == "val"]
    pairs = _pairs(load_images(data_dir, val), val, model.config)
    score = val_retrieval(model, pairs)
    example = pairs.pixels[:2]
    with torch.no_grad():
        output = model.eval().encode_image(example.to(next(model.parameters()).device))[0]
    return ModelCard(model, {"val_retrieval_top1": score}, example.numpy(), output.cpu().numpy())


def pretraining_corpus(
    data_dir: Path, stimuli: pd.DataFrame, params: MLIPParams, base: BaseParams
) -> tuple[pd.DataFrame, np.ndarray]:
    """The twin generator's corpus when ``data_dir`` is a twin, else the stimuli's train pairs."""
    desc_path = Path(data_dir) / "dataset_description.json"
    desc = json.loads(desc_path.read_text()) if desc_path.exists() else {}
    if "profile" in desc and params.corpus_size > 0:
        from mindpipe.twin.config import get_profile
        from mindpipe.twin.stimuli import pretraining_corpus as twin_corpus

        cfg = get_profile(desc["profile"])
        return twin_corpus(cfg, int(desc["seed"]), params.corpus_size, params.caption_detail)
    train = stimuli[stimuli["split"] == "train"]
    return train, load_images(data_dir, train)


def _pairs(images: np.ndarray, table: pd.DataFrame, cfg) -> Pairs:
    captions = list(table["caption"])
    return Pairs(
        preprocess_images(list(images), cfg),
        tokenize(captions, cfg),
        captions,
        list(table["category"]),
    )


def clip_losses(
    model: MLIP,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    weights: tuple[float, float],
    token_group: int | None = None,
) -> torch.Tensor:
    """Global contrastive loss, plus MLIP's frequency-view and token-level terms when weighted."""
    scale = model.logit_scale.exp().clamp(max=100)
    pooled, image_tokens, frequency = model.encode_image_views(pixels)
    text_pooled, text_tokens = model.encode_text(tokens)
    loss = info_nce(pooled, text_pooled, scale, symmetric=True)
    freq_w, token_w = weights
    if frequency is not None and freq_w:
        loss = loss + freq_w * info_nce(frequency[0], text_pooled, scale, symmetric=True)
    if token_w:
        mask = tokens != 0
        token_loss = token_alignment_loss(image_tokens, text_tokens, mask, scale, token_group)
        if frequency is not None:
            freq_tokens = token_alignment_loss(frequency[1], text_tokens, mask, scale, token_group)
            token_loss = (token_loss + freq_tokens) / 2
        loss = loss + token_w * token_loss
    return loss


def train_model(
    model: MLIP, train: Pairs, val: Pairs, params: MLIPParams, weights, seed: int, *, report_as: str
) -> tuple[int, float]:
    """AdamW + cosine; keeps the epoch with the best validation image-text retrieval.

    Each epoch's score is announced as ``report_as`` (see :mod:`mindpipe.reporting`).
    """
    device = next(model.parameters()).device
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps = max(len(train.pixels) // params.batch_size, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.lr, total_steps=params.epochs * steps, pct_start=0.1
    )
    best = (-1.0, 0, None)
    for epoch in progress(range(params.epochs), desc="mlip epochs"):
        model.train()
        order = torch.randperm(len(train.pixels), generator=generator)
        for step in range(steps):
            idx = order[step * params.batch_size : (step + 1) * params.batch_size]
            pixels, tokens = train.pixels[idx].to(device), train.tokens[idx].to(device)
            loss = clip_losses(model, pixels, tokens, weights, params.token_group)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = val_retrieval(model, val)
        report(report_as, epoch, score)
        if score > best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return best[1], time.perf_counter() - start


@torch.no_grad()
def embed(model: MLIP, pairs: Pairs, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pooled image and text embeddings of every pair."""
    model.eval()
    device = next(model.parameters()).device
    img = torch.cat(
        [
            model.encode_image(pairs.pixels[i : i + batch].to(device))[0]
            for i in range(0, len(pairs.pixels), batch)
        ]
    )
    txt = torch.cat(
        [
            model.encode_text(pairs.tokens[i : i + batch].to(device))[0]
            for i in range(0, len(pairs.tokens), batch)
        ]
    )
    return torch.nn.functional.normalize(img, dim=-1).cpu(), torch.nn.functional.normalize(
        txt, dim=-1
    ).cpu()


def retrieval(model: MLIP, pairs: Pairs) -> dict[str, float]:
    """Top-1 image->text and text->image; a retrieved caption with the true text counts."""
    img, txt = embed(model, pairs)
    sim = img @ txt.T
    captions = np.array(pairs.captions)
    i2t = np.mean(captions[sim.argmax(dim=1).numpy()] == captions)
    t2i = np.mean(captions[sim.argmax(dim=0).numpy()] == captions)
    return {"retrieval_i2t_top1": float(i2t), "retrieval_t2i_top1": float(t2i)}


def val_retrieval(model: MLIP, pairs: Pairs) -> float:
    """Mean of image->text and text->image top-1: the score epochs and versions are chosen on."""
    return float(np.mean(list(retrieval(model, pairs).values())))


@torch.no_grad()
def evaluate_model(
    model: MLIP,
    test: Pairs,
    templates: tuple[str, ...],
    categories: list[str],
    held_out: np.ndarray,
) -> dict[str, float]:
    img, _ = embed(model, test)
    device = next(model.parameters()).device

    def encode_texts(texts: list[str]) -> np.ndarray:
        return model.encode_text(tokenize(texts, model.config).to(device))[0].cpu().numpy()

    prompts = torch.as_tensor(category_embeddings(encode_texts, categories, templates))
    predicted = np.array(categories)[(img @ prompts.T).argmax(1).numpy()]
    correct = predicted == np.array(test.categories)
    return {
        "zero_shot_top1": float(correct[held_out].mean()) if held_out.any() else float("nan"),
        "zero_shot_top1_all": float(correct.mean()),
        **retrieval(model, test),
    }


@torch.no_grad()
def throughput(model: MLIP, pixels: torch.Tensor, batch: int = 256, repeats: int = 3) -> float:
    """Images per second through the image encoder (best of ``repeats`` after a warm-up)."""
    model.eval()
    device = next(model.parameters()).device
    x = pixels[:batch].to(device)
    model.encode_image(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode_image(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def _markdown(table: pd.DataFrame, n_categories: int) -> str:
    lines = [
        "# MLIP ablation (same training budget per variant)",
        "",
        "| variant | merge ratio | zero-shot top-1 (held-out) | zero-shot top-1 (all) | "
        "image→text top-1 | text→image top-1 | val retrieval (selection) | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.variant} | {r.merge_ratio:g} | {r.zero_shot_top1:.3f} | "
            f"{r.zero_shot_top1_all:.3f} | {r.retrieval_i2t_top1:.3f} | "
            f"{r.retrieval_t2i_top1:.3f} | {r.val_retrieval_top1:.3f} | {r.images_per_s:.0f} |"
        )
    lines += ["", f"Zero-shot chance: 1/{n_categories} = {1 / n_categories:.3f}."]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in table.itertuples():
        ax.scatter(r.images_per_s, r.zero_shot_top1, s=60)
        ax.annotate(
            r.variant, (r.images_per_s, r.zero_shot_top1), textcoords="offset points", xytext=(5, 5)
        )
    ax.axhline(chance, color="k", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("image encoder throughput (images/s)")
    ax.set_ylabel("zero-shot top-1, held-out categories")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
