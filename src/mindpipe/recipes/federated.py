"""The ``federated`` stage: FedAvg vs PmcmFL, sites = subjects, at several missing rates.

Every (strategy, missing rate) pair runs the same federation from the same initial weights and
the same site partition; only the aggregation and the local objective differ. Reported per
pair: pooled test accuracy of the last completed round with complete inputs and with fMRI
alone (the uni-modality setting: image and caption features missing at inference), the pooled
val accuracy (what the registry scores and a sweep optimises; test is never selected on), plus
per-round curves (``steps.json``, logged to MLflow with ``step=round``), a plot and a table.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from mindpipe.exceptions import MissingWeightsError, ParamsError
from mindpipe.federated.client import LocalTraining, SiteClient
from mindpipe.federated.data import Site, load_sites, skew_and_mask
from mindpipe.federated.simulation import ENGINES, History, one_torch_thread, simulate
from mindpipe.federated.strategies import STRATEGIES, build_strategy, pooled
from mindpipe.models.pmcmfl import PmcmFLClassifier, PmcmFLConfig
from mindpipe.params import BaseParams
from mindpipe.runner import STEPS_FILE
from mindpipe.stages import ModelCard
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FederatedParams:
    """``federated:`` section (see params.yaml for what each key does)."""

    strategies: tuple[str, ...] = STRATEGIES
    engine: str = "inprocess"
    missing_rates: tuple[float, ...] = (0.0, 0.5)
    rounds: int = 20
    clients_per_round: int = 3
    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    dim: int = 64
    fmri_dropout: float = 0.5
    dirichlet_alpha: float = 1.0
    fail_site: int = -1
    fail_round: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown:
            raise ParamsError(f"federated.strategies: unknown {sorted(unknown)}; use {STRATEGIES}")
        if self.engine not in ENGINES:
            raise ParamsError(f"federated.engine: unknown {self.engine!r}; use one of {ENGINES}")
        if not 0.0 <= self.fmri_dropout < 1.0:
            raise ParamsError(f"federated.fmri_dropout must lie in [0, 1); got {self.fmri_dropout}")
        if not all(0.0 <= p < 1.0 for p in self.missing_rates):
            raise ParamsError(
                f"federated.missing_rates must lie in [0, 1); got {self.missing_rates}"
            )


def make_client(
    index: int,
    *,
    sites: list[Site],
    n_classes: int,
    feature_dim: int,
    params: FederatedParams,
    seed: int,
    state_dir: Path,
) -> SiteClient:
    """Site ``index``'s client: shared weights start identical (same seed) on every site; its
    own fMRI encoder resumes from ``state_dir/<site>.safetensors`` once it has trained."""
    site = sites[index]
    torch.manual_seed(seed)
    cfg = PmcmFLConfig(
        site.n_voxels,
        feature_dim,
        n_classes,
        dim=params.dim,
        fmri_input_dropout=params.fmri_dropout,
    )
    fail = params.fail_round if index == params.fail_site else 0
    state_file = Path(state_dir) / f"{site.name}.safetensors"
    return SiteClient(
        site, index, PmcmFLClassifier(cfg), params.local, seed + index, state_file, fail
    )


def federation_runs(params: FederatedParams) -> list[tuple[str, float, str]]:
    """``(strategy, missing rate, tag)`` of every federation the stage runs, in order; the tag
    names its metrics and its model folder."""
    runs = [(s, p) for p in params.missing_rates for s in params.strategies]
    return [(s, p, f"{s}_m{round(p * 100):02d}") for s, p in runs]


def masked_sites(
    complete: list[Site], n_classes: int, params: FederatedParams, rate: float, seed: int
) -> list[Site]:
    """The complete sites skewed by class and with modalities missing at ``rate``."""
    return [
        skew_and_mask(site, n_classes, params.dirichlet_alpha, rate, seed + i)
        for i, site in enumerate(complete)
    ]


def client_factory(
    sites: list[Site], n_classes: int, params: FederatedParams, seed: int, state_dir: Path
) -> Callable[[int], SiteClient]:
    """Site index -> its client, the sites' own weights kept in ``state_dir``."""
    return functools.partial(
        make_client,
        sites=sites,
        n_classes=n_classes,
        feature_dim=sites[0].train.image.shape[1],
        params=params,
        seed=seed,
        state_dir=state_dir,
    )


def run_federation(
    sites: list[Site],
    n_classes: int,
    strategy: str,
    params: FederatedParams,
    seed: int,
    state_dir: Path,
    report_as: str = "",
) -> tuple[History, list[str]]:
    """One federation of ``sites`` under ``strategy``, and the names of the shared weights;
    each site's own weights end up in ``state_dir``. Each round's val accuracy is announced
    as ``<report_as>_val_accuracy`` (for a sweep's pruner)."""
    factory = client_factory(sites, n_classes, params, seed, state_dir)
    first = factory(0)
    initial = first.get_parameters({})
    server = build_strategy(
        strategy, initial, len(sites), params.clients_per_round, seed, report_as
    )
    return simulate(factory, len(sites), server, params.rounds, params.engine), first.keys


def train_federated(
    *, betas_dir: Path, features_dir: Path, out_dir: Path, params: FederatedParams, base: BaseParams
) -> dict[str, float]:
    complete, classes = load_sites(betas_dir, features_dir)
    metrics: dict[str, float] = {"n_sites": float(len(complete)), "n_classes": float(len(classes))}
    steps: dict[str, list[list[float]]] = {}
    rows = []
    for strategy, rate, tag in progress(federation_runs(params), desc="federated runs"):
        sites = masked_sites(complete, len(classes), params, rate, base.seed)
        folder = out_dir / "models" / tag
        history, keys = run_federation(
            sites, len(classes), strategy, params, base.seed, folder, report_as=tag
        )
        _save_global(folder, history, keys)
        final = history.rounds[-1]
        metrics[f"{tag}_accuracy"] = final["accuracy"]
        metrics[f"{tag}_accuracy_uni"] = final["accuracy_uni"]
        metrics[f"{tag}_val_accuracy"] = final["val_accuracy"]
        metrics[f"{tag}_bytes"] = float(sum(r["bytes"] for r in history.rounds))
        metrics[f"{tag}_last_completed_round"] = float(history.last_completed_round)
        for record in history.rounds:
            for key, value in record.items():
                if key != "round":
                    steps.setdefault(f"{tag}_round_{key}", []).append([record["round"], value])
        rows.append((strategy, rate, final, history))
    write_json(out_dir / STEPS_FILE, steps)
    (out_dir / "results.md").write_text(_markdown(rows, len(classes)))
    _plot(rows, out_dir / "plots" / "accuracy_vs_round.png", 1.0 / len(classes))
    return metrics


def score_saved_federation(
    model_dir: Path,
    *,
    betas_dir: Path,
    features_dir: Path,
    params: FederatedParams,
    base: BaseParams,
) -> ModelCard:
    """Each saved federation's val accuracy with complete inputs, pooled over the sites: its
    global weights (+ prototype library) with each site's own fMRI encoder, evaluated as the
    last round did. The signature is the first federation's first site (fMRI, image and
    caption features in, class logits out)."""
    complete, classes = load_sites(betas_dir, features_dir)
    metrics, models = {}, {}
    with one_torch_thread():
        for strategy, rate, tag in federation_runs(params):
            sites = masked_sites(complete, len(classes), params, rate, base.seed)
            folder = Path(model_dir) / tag
            factory = client_factory(sites, len(classes), params, base.seed, folder)
            clients = [factory(i) for i in range(len(sites))]
            weights = _load_global(folder, clients[0].keys)
            evals = [c.evaluate(weights, {"strategy": strategy})[2] for c in clients]
            metrics[f"{tag}_val_accuracy"] = pooled(
                [e["val_accuracy"] for e in evals], [e["n_val"] for e in evals]
            )
            models[tag] = {site.name: c.model for site, c in zip(sites, clients, strict=True)}
    first = next(iter(models.values()))[complete[0].name].eval()
    val = complete[0].val
    example = {"fmri": val.fmri[:2], "image": val.image[:2], "text": val.text[:2]}
    with torch.no_grad():
        reps = first.encode(*(torch.from_numpy(a) for a in example.values()))
        logits = first.head(first.fuse(reps)).numpy()
    return ModelCard(models, metrics, example, logits)


def _load_global(folder: Path, keys: list[str]) -> list[np.ndarray]:
    """The message the last completed round sent down: shared weights (+ prototypes)."""
    path = folder / "global.safetensors"
    if not path.is_file():
        raise MissingWeightsError(f"federated model file '{path}' is missing")
    tensors = load_file(str(path))
    extra = [tensors[k] for k in ("prototypes", "prototype_counts") if k in tensors]
    return [tensors[k] for k in keys] + extra


def _save_global(folder: Path, history: History, keys: list[str]) -> None:
    """Last completed round's shared weights (+ prototypes); the sites wrote their own."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(a) for k, a in zip(keys, history.final, strict=False)}
    if len(history.final) > len(keys):
        tensors["prototypes"], tensors["prototype_counts"] = history.final[len(keys) :]
    save_file(tensors, str(folder / "global.safetensors"))


def _markdown(rows: list, n_classes: int) -> str:
    lines = [
        f"# Federated classification of {n_classes} seen categories (chance {1 / n_classes:.3f})",
        "",
        "Accuracy on the pooled test items of the last completed round: *complete* = fMRI, image",
        "and caption features; *uni-modality* = fMRI only.",
        "",
        "| strategy | missing rate (train) | accuracy complete | accuracy uni-modality | MB sent |",
        "|---|---|---|---|---|",
    ]
    for strategy, rate, final, history in rows:
        mb = sum(r["bytes"] for r in history.rounds) / 1e6
        lines.append(
            f"| {strategy} | {rate:.1f} | {final['accuracy']:.3f} | "
            f"{final['accuracy_uni']:.3f} | {mb:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list, path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for strategy, rate, _, history in rows:
        x = [r["round"] for r in history.rounds]
        style = "-" if strategy == "pmcmfl" else "--"
        for ax, key in zip(axes, ("accuracy", "accuracy_uni"), strict=True):
            ax.plot(x, [r[key] for r in history.rounds], style, label=f"{strategy} m={rate:.1f}")
    for ax, title in zip(axes, ("complete inputs", "uni-modality (fMRI only)"), strict=True):
        ax.axhline(chance, color="grey", lw=0.8, ls=":")
        ax.set(title=title, xlabel="round", ylabel="test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
