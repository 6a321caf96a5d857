"""Per-site datasets: one site per subject, a non-IID class skew, and missing modalities.

The task is category classification over the *seen* categories (held-out categories exist only
in the test split, so they have no training signal). Train rows (repeats kept) train, val rows
are monitored each round, test rows of seen categories give the reported accuracies; nothing is
selected on test. Training items lose each modality independently with probability
``missing_rate`` (items that lose all of them are dropped, as in the released code); val and
test items are complete, and uni-modal inference drops the non-fMRI modalities explicitly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mindpipe.exceptions import DataError
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import list_subjects, load_betas, load_stimuli
from mindpipe.models.pmcmfl import MODALITIES


@dataclasses.dataclass(frozen=True)
class Split:
    fmri: np.ndarray  # (n, V) float32
    image: np.ndarray  # (n, D) float32
    text: np.ndarray  # (n, D) float32
    labels: np.ndarray  # (n,) int64
    present: np.ndarray  # (n, 3) bool, MODALITIES order

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> Split:
        return Split(*(a[rows] for a in dataclasses.astuple(self)))


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    train: Split
    val: Split
    test: Split

    @property
    def n_voxels(self) -> int:
        return int(self.train.fmri.shape[1])


def load_sites(betas_dir: Path, features_dir: Path) -> tuple[list[Site], list[str]]:
    """Complete (nothing missing, no skew) sites and the seen category names (class order)."""
    stimuli = load_stimuli(betas_dir)
    classes = sorted(stimuli.loc[~stimuli["held_out"].astype(bool), "category"].unique())
    if len(classes) < 2:
        raise DataError(f"'{Path(betas_dir) / 'stimuli.tsv'}' has fewer than 2 seen categories")
    index = {c: i for i, c in enumerate(classes)}
    store = FeatureStore(features_dir)
    sites = []
    for subject in list_subjects(betas_dir):
        sb = load_betas(betas_dir, subject)
        splits = {}
        for split in ("train", "val", "test"):
            stim = np.asarray(sb.stim[split])
            category = stimuli.loc[stim, "category"].to_numpy()
            keep = np.array([c in index for c in category])
            stim = stim[keep]
            splits[split] = Split(
                fmri=np.asarray(sb.betas[split][keep], dtype=np.float32),
                image=_unit(store.image_pooled(stim)),
                text=_unit(store.text_pooled(stim)),
                labels=np.array([index[c] for c in category[keep]], dtype=np.int64),
                present=np.ones((len(stim), len(MODALITIES)), dtype=bool),
            )
        sites.append(Site(subject, **splits))
    return sites, classes


def skew_and_mask(
    site: Site, n_classes: int, dirichlet_alpha: float, missing_rate: float, seed: int
) -> Site:
    """Thin the site's training items by a Dirichlet class profile, then drop modalities.

    Class ``c`` keeps a fraction ``w_c / max(w)`` of its items with ``w ~ Dirichlet(alpha)``
    (``alpha <= 0`` keeps everything), so smaller ``alpha`` means a stronger skew; at least
    one item per site is kept.
    """
    rng = np.random.default_rng(seed)
    train = site.train
    if dirichlet_alpha > 0:
        w = rng.dirichlet(np.full(n_classes, dirichlet_alpha))
        keep = rng.random(len(train)) < (w / w.max())[train.labels]
        keep[np.argmax(w[train.labels])] = True
        train = train.subset(np.flatnonzero(keep))
    present = rng.random(train.present.shape) >= missing_rate
    train = dataclasses.replace(train, present=present).subset(np.flatnonzero(present.any(1)))
    return dataclasses.replace(site, train=train)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
