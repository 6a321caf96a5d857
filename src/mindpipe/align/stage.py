"""The ``align`` stage: every subject's voxels in one template space.

Per subject (the ones ``preprocess`` wrote):

1. register its T1w image to the template (:class:`~mindpipe.align.TemplateAligner`: affine by
   mutual information, then optionally SyN). The template is the dataset's own
   (``data/template/*_T1w.nii.gz``, the twin's) or nilearn's MNI152, which ships with nilearn;
2. pull every voxel of a template grid (the subjects' BOLD voxel size) into the subject's
   scanner space and interpolate its selected betas there (:mod:`mindpipe.align.resample`).
   The BOLD and T1w images share the scanner space their headers give, as in BIDS;
3. on the twin, score the mapping against the true one: at each template voxel the subject
   covers, the distance (template mm) between the voxel and where the estimated subject point
   truly lies, for no alignment (scanner mm taken as template mm), the affine part and the
   whole mapping.

The output folder has the layout of ``artifacts/preprocess/`` (so :func:`mindpipe.io.betas.
load_betas` reads it), in template space: every subject has the same columns, the template
voxels that at least one subject covers. Datasets published as betas without anatomy (NSD,
GOD, CC2017 in this project's import) cannot be registered here: the stage records that.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import sparse

from mindpipe.align.registration import TemplateAligner, anatomical_volume
from mindpipe.align.resample import Grid, covering_grid, sample_image, voxels_operator
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io.adapters.common import load_nifti, nifti_data
from mindpipe.io.betas import SubjectBetas, list_subjects, load_betas, load_meta
from mindpipe.io.bids import SPLITS, find_t1w
from mindpipe.io.trials import BETAS_DATASETS
from mindpipe.params import BaseParams
from mindpipe.twin.writer import TRUTH_DIR
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)

TEMPLATES = ("auto", "dataset", "mni152")


@dataclasses.dataclass(frozen=True)
class AlignParams:
    """The ``align:`` section of params.yaml.

    Attributes
    ----------
    template : str
        ``dataset`` (``data/template/*_T1w.nii.gz``), ``mni152`` (nilearn's), or ``auto``: the
        dataset's when it has one, else MNI152.
    mni_resolution : int
        Voxel size (mm) of nilearn's MNI152 template: 1 or 2.
    nonlinear : bool
        Follow the affine with a SyN warp.
    affine_iters : tuple of int
        Affine optimizer iterations per pyramid level, coarse to fine.
    registration_mm : float or None
        Register copies of the images resampled to this voxel size where theirs are finer
        (None: as they are). dipy's dense metric costs in proportion to the template's
        voxels: MNI152 at 2 mm takes about a minute per subject on 2 CPU cores, at 4 mm
        about 8 times less.
    syn_iters : tuple of int
        SyN iterations per level, coarse to fine (at most 3 levels).
    voxel_mm : float or None
        Voxel size of the template-space grid the betas are resampled to (None: the first
        subject's BOLD voxel size).
    min_coverage : float
        A template voxel takes a subject's value only if at least this much of its trilinear
        weight falls on the subject's selected voxels.
    """

    template: str = "auto"
    mni_resolution: int = 2
    nonlinear: bool = False
    affine_iters: tuple[int, ...] = (200, 100, 50)
    registration_mm: float | None = None
    syn_iters: tuple[int, ...] = (20, 10, 5)
    voxel_mm: float | None = None
    min_coverage: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            ("template", self.template in TEMPLATES, f"one of {list(TEMPLATES)}"),
            ("mni_resolution", self.mni_resolution in (1, 2), "1 or 2"),
            ("affine_iters", _levels_ok(self.affine_iters), "1 to 3 positive integers"),
            (
                "registration_mm",
                self.registration_mm is None or self.registration_mm > 0,
                "> 0 or null",
            ),
            ("syn_iters", _levels_ok(self.syn_iters), "1 to 3 positive integers"),
            ("voxel_mm", self.voxel_mm is None or self.voxel_mm > 0, "> 0 or null"),
            ("min_coverage", 0 < self.min_coverage <= 1, "in (0, 1]"),
        ]
        problems = [
            f"align.{name}: must be {allowed}; got {getattr(self, name)!r}"
            for name, ok, allowed in checks
            if not ok
        ]
        if problems:
            raise ParamsError("; ".join(problems))

    def aligner(self) -> TemplateAligner:
        return TemplateAligner(
            nonlinear=self.nonlinear,
            affine_iters=self.affine_iters,
            registration_mm=self.registration_mm,
            syn_iters=self.syn_iters,
        )


def _levels_ok(levels: tuple[int, ...]) -> bool:
    return 1 <= len(levels) <= 3 and all(int(n) == n and n > 0 for n in levels)


def align(
    *, data_dir: Path, betas_dir: Path, out_dir: Path, params: AlignParams, base: BaseParams
) -> dict[str, float]:
    """The ``align`` stage (module docstring); returns its metrics."""
    data_dir, betas_dir, out_dir = Path(data_dir), Path(betas_dir), Path(out_dir)
    if base.dataset in BETAS_DATASETS:
        reason = (
            f"base.dataset {base.dataset!r} is imported as betas without anatomy: there is no "
            "T1w image to register, so the voxels stay in each subject's own space"
        )
        logger.warning("align skipped: %s", reason)
        write_json(out_dir / "alignment.json", {"available": False, "reason": reason})
        return {"available": 0.0}
    start = time.perf_counter()
    subjects = list_subjects(betas_dir)
    anat = {s: find_t1w(data_dir, s) for s in subjects}  # a missing one is named up front
    template_name, template = load_template(data_dir, params)
    betas = {s: load_betas(betas_dir, s) for s in subjects}
    bold = {s: _bold_grid(betas_dir, s) for s in subjects}
    voxel_mm = params.voxel_mm or bold[subjects[0]].voxel_mm
    grid = covering_grid(np.asarray(template.dataobj), template.affine, voxel_mm)
    points = grid.centres()
    planes = qc_planes(template)
    truth = _truth_transforms(data_dir, subjects)

    mapped = {
        s: _register(_load_anat(anat[s]), template, points, planes, bold[s], betas[s], params)
        for s in progress(subjects, desc="align: subjects")
    }
    covered = {s: m["coverage"] >= params.min_coverage for s, m in mapped.items()}
    roi = np.flatnonzero(np.logical_or.reduce(list(covered.values())))
    if roi.size == 0:
        raise DataError(
            f"no template voxel is covered by any subject (align.min_coverage "
            f"{params.min_coverage}); did registration fail? see {out_dir / 'plots'}"
        )

    shutil.copyfile(betas_dir / "stimuli.tsv", out_dir / "stimuli.tsv")
    metrics: dict[str, float] = {"available": 1.0, "n_template_voxels": float(roi.size)}
    for subject, m in mapped.items():
        _save_subject(out_dir / subject, betas[subject], m, roi, covered[subject], grid, params)
        metrics[f"{subject}.coverage"] = float(covered[subject][roi].mean())
    metrics |= _agreement(betas, mapped, points, bold, params.min_coverage)
    errors = {
        s: alignment_errors(m["aligner"], points[covered[s]], truth[s])
        for s, m in mapped.items()
        if s in truth
    }
    for subject, e in errors.items():
        metrics |= {f"{subject}.error_{k}_mm": v for k, v in e.items()}
    if errors:
        for key in ("none", "affine", "final"):
            metrics[f"error_{key}_mm"] = float(np.mean([e[key] for e in errors.values()]))
        metrics["error_final_voxels"] = metrics["error_final_mm"] / grid.voxel_mm
        _error_plot(out_dir / "plots" / "alignment_error.png", errors, grid.voxel_mm)
    _qc_plot(out_dir / "plots" / "qc.png", template, planes, mapped)
    (out_dir / "alignment.md").write_text(
        _report(template_name, grid, roi.size, metrics, errors, params)
    )
    write_json(
        out_dir / "alignment.json",
        {
            "available": True,
            "template": template_name,
            "grid": {"shape": list(grid.shape), "affine": grid.affine},
            "subjects": subjects,
        },
    )
    metrics["seconds"] = time.perf_counter() - start
    return metrics


# ---------------------------------------------------------------------------------- inputs
def load_template(data_dir: Path, params: AlignParams) -> tuple[str, nib.Nifti1Image]:
    """The template's name and T1w image, as ``params.template`` asks."""
    own = sorted((data_dir / "template").glob("*_T1w.nii.gz"))
    if params.template == "dataset" and not own:
        raise DataError(
            f"align.template is 'dataset' but '{data_dir / 'template'}' holds no *_T1w.nii.gz; "
            "use 'mni152' (or 'auto')"
        )
    if own and params.template != "mni152":
        return own[0].name.removesuffix("_T1w.nii.gz"), _load_anat(own[0])
    from nilearn.datasets import load_mni152_template

    return f"MNI152 ({params.mni_resolution} mm, nilearn)", load_mni152_template(
        resolution=params.mni_resolution
    )


def _load_anat(path: Path) -> nib.Nifti1Image:
    """A 3-D image read into memory; unreadable, wrong-shaped or non-finite data names the file."""
    img = load_nifti(path, "anatomical image")
    data = np.asarray(nifti_data(img, "anatomical image"), dtype=np.float32)
    return nib.Nifti1Image(anatomical_volume(data, f"anatomical image '{path}'"), img.affine)


def _bold_grid(betas_dir: Path, subject: str) -> Grid:
    meta = load_meta(betas_dir, subject)
    if not meta.get("affine") or not meta.get("bold_shape"):
        raise DataError(
            f"'{betas_dir / subject / 'meta.json'}' lacks the BOLD grid ('affine', "
            "'bold_shape') that alignment needs"
        )
    return Grid(tuple(meta["bold_shape"][:3]), np.asarray(meta["affine"], dtype=np.float64))


def _truth_transforms(data_dir: Path, subjects: list[str]) -> dict:
    """The twin's true subject -> template mappings (empty for any other dataset)."""
    if not (data_dir / TRUTH_DIR).is_dir():
        return {}
    from mindpipe.twin import load_truth

    return {s: load_truth(data_dir, s).transform for s in subjects}


def _register(
    moving: nib.Nifti1Image,
    template: nib.Nifti1Image,
    points: np.ndarray,
    planes: list[np.ndarray],
    bold: Grid,
    sb: SubjectBetas,
    params: AlignParams,
) -> dict:
    """Fit the subject's mapping and the operator that reads its betas (on its ``bold`` grid)
    at template ``points``; keep the T1w sampled on the QC ``planes`` rather than the image,
    which may be large."""
    aligner = params.aligner().fit(moving, template)
    subject_mm = aligner.template_to_subject(points)
    weights, coverage = voxels_operator(subject_mm, bold, sb.voxel_index)
    return {
        "aligner": aligner,
        "subject_mm": subject_mm,
        "weights": weights,
        "coverage": coverage,
        "before": [sample_image(moving, p.reshape(-1, 3)).reshape(p.shape[:2]) for p in planes],
        "after": [
            sample_image(moving, aligner.template_to_subject(p.reshape(-1, 3))).reshape(p.shape[:2])
            for p in planes
        ],
    }


def qc_planes(template: nib.Nifti1Image) -> list[np.ndarray]:
    """mm coordinates ``(a, b, 3)`` of the template's sagittal, coronal and axial planes
    through the centre of its non-zero voxels."""
    data = np.asarray(template.dataobj)
    centre = np.round(np.argwhere(data > 0).mean(axis=0)).astype(int)
    planes = []
    for axis in range(3):
        axes = [np.arange(n) for n in data.shape]
        axes[axis] = centre[axis : axis + 1]  # the plane: one index along ``axis``
        ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).squeeze(axis)
        planes.append(ijk @ template.affine[:3, :3].T + template.affine[:3, 3])
    return planes


# ---------------------------------------------------------------------------------- scoring
def _agreement(
    betas: dict[str, SubjectBetas],
    mapped: dict[str, dict],
    points: np.ndarray,
    bold: dict[str, Grid],
    min_coverage: float,
) -> dict[str, float]:
    """Cross-subject agreement with and without alignment (see :func:`cross_subject_r`)."""
    unaligned = {s: voxels_operator(points, bold[s], sb.voxel_index) for s, sb in betas.items()}
    aligned = {s: (m["weights"], m["coverage"]) for s, m in mapped.items()}
    out = {}
    for key, operators in (("cross_subject_r", aligned), ("cross_subject_r_unaligned", unaligned)):
        r = cross_subject_r(betas, operators, min_coverage)
        if r is not None:
            out[key] = r
    return out


def cross_subject_r(
    betas: dict[str, SubjectBetas],
    operators: dict[str, tuple[sparse.csr_matrix, np.ndarray]],
    min_coverage: float,
) -> float | None:
    """Mean Pearson r between two subjects' test responses at the same template voxel.

    Averaged over the template voxels both subjects cover, then over the pairs of subjects
    shown the same test images in the same order (None if there is no such pair). A template
    voxel that means the same place in both brains responds alike to the same images (as far
    as the subjects' tunings agree), so better alignment gives a higher r.
    """
    values = []
    for a, b in itertools.combinations(sorted(betas), 2):
        if not np.array_equal(betas[a].stim["test"], betas[b].stim["test"]):
            continue
        both = (operators[a][1] >= min_coverage) & (operators[b][1] >= min_coverage)
        if both.sum() == 0:
            continue
        x, y = (
            _standardise(operators[s][0][both] @ np.asarray(betas[s].betas["test"]).T)
            for s in (a, b)
        )
        values.append(float((x * y).mean(axis=1).mean()))
    return float(np.mean(values)) if values else None


def _standardise(x: np.ndarray) -> np.ndarray:
    """Rows to zero mean and unit variance (constant rows stay 0)."""
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)


def alignment_errors(aligner: TemplateAligner, template_mm: np.ndarray, truth) -> dict:
    """Mean distance (mm) between template points and where the subject points that each
    mapping pairs them with truly lie in the template (``truth``: subject mm -> template mm).

    ``none`` pairs a template point with the same coordinates in the subject's scanner space.
    """
    pulls = {
        "none": template_mm,
        "affine": aligner.template_to_subject(template_mm, nonlinear=False),
        "final": aligner.template_to_subject(template_mm),
    }
    return {
        key: float(np.linalg.norm(truth.apply(p) - template_mm, axis=1).mean())
        for key, p in pulls.items()
    }


# ---------------------------------------------------------------------------------- outputs
def _save_subject(
    folder: Path,
    sb: SubjectBetas,
    mapped: dict,
    roi: np.ndarray,
    covered: np.ndarray,
    grid: Grid,
    params: AlignParams,
) -> None:
    """The subject's betas on the template ROI (preprocess layout) and its mapping."""
    folder.mkdir(parents=True)
    weights = mapped["weights"][roi].multiply(covered[roi][:, None]).tocsr()
    for split in SPLITS:
        x = np.asarray(sb.betas[split], dtype=np.float32)
        np.save(folder / f"betas_{split}.npy", np.asarray(weights @ x.T, dtype=np.float32).T)
        np.save(folder / f"stim_{split}.npy", np.asarray(sb.stim[split], dtype=np.int64))
    np.save(folder / "voxel_index.npy", roi.astype(np.int64))
    np.save(folder / "coverage.npy", mapped["coverage"][roi].astype(np.float32))
    np.save(folder / "template_to_subject_mm.npy", mapped["subject_mm"][roi].astype(np.float32))
    aligner: TemplateAligner = mapped["aligner"]
    write_json(
        folder / "meta.json",
        {
            "subject": sb.subject,
            "space": "template",
            "bold_shape": list(grid.shape),
            "affine": grid.affine,
            "affine_template_to_subject_mm": aligner.affine_,
            "nonlinear": aligner.warp_ is not None,
            "n_voxels": int(roi.size),
            "n_covered": int(covered[roi].sum()),
            "n_subject_voxels": sb.n_voxels,
            "min_coverage": params.min_coverage,
        },
    )


def _qc_plot(
    path: Path, template: nib.Nifti1Image, planes: list[np.ndarray], mapped: dict[str, dict]
) -> None:
    """One row per subject: sagittal, coronal and axial planes of the template with the
    subject's T1w contours in red, before alignment (scanner mm read as template mm) and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    path.parent.mkdir(parents=True, exist_ok=True)
    tpl = [sample_image(template, p.reshape(-1, 3)).reshape(p.shape[:2]) for p in planes]
    names = ("sagittal", "coronal", "axial")
    fig, axes = plt.subplots(len(mapped), 6, figsize=(13, 2.3 * len(mapped)), squeeze=False)
    for row, (subject, m) in zip(axes, mapped.items(), strict=True):
        after = np.concatenate([a.ravel() for a in m["after"]])
        levels = np.quantile(after[after > 0], [0.25, 0.6]) if (after > 0).any() else [0.5]
        for col, when in enumerate(("before", "after")):
            for k, name in enumerate(names):
                ax = row[3 * col + k]
                ax.imshow(tpl[k].T, cmap="gray", origin="lower")
                # smoothed a little, so the contours follow tissue rather than scan noise
                ax.contour(
                    gaussian_filter(m[when][k], 1).T, levels=levels, colors="r", linewidths=0.6
                )
                ax.set_title(f"{subject} {when}, {name}", fontsize=8)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _error_plot(path: Path, errors: dict[str, dict[str, float]], voxel_mm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    subjects = list(errors)
    x = np.arange(len(subjects))
    fig, ax = plt.subplots(figsize=(1.6 * len(subjects) + 2, 3.5))
    for i, (key, label) in enumerate(
        (("none", "no alignment"), ("affine", "affine"), ("final", "final"))
    ):
        ax.bar(x + (i - 1) * 0.27, [errors[s][key] for s in subjects], 0.27, label=label)
    ax.axhline(voxel_mm, color="grey", ls=":", lw=1, label=f"one voxel ({voxel_mm:g} mm)")
    ax.set(xticks=x, xticklabels=subjects, ylabel="mean error (mm)", title="alignment error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(
    template: str,
    grid: Grid,
    n_roi: int,
    metrics: dict[str, float],
    errors: dict[str, dict[str, float]],
    params: AlignParams,
) -> str:
    lines = [
        f"# Alignment to {template}",
        "",
        f"Template grid {grid.shape} of {grid.voxel_mm:g} mm voxels; {n_roi} voxels covered by "
        f"at least one subject (coverage >= {params.min_coverage}). Registration: affine "
        f"(mutual information){' + SyN' if params.nonlinear else ''}.",
        "",
    ]
    if errors:
        lines += [
            "Mean error in mm (and BOLD voxels) at the template voxels each subject covers, "
            "against the twin's true mapping:",
            "",
            "| subject | no alignment | affine | final | covered |",
            "|---|---|---|---|---|",
        ]
        for s, e in errors.items():
            cells = [
                f"{e[k]:.2f} ({e[k] / grid.voxel_mm:.2f})" for k in ("none", "affine", "final")
            ]
            lines.append(f"| {s} | {' | '.join(cells)} | {metrics[f'{s}.coverage']:.2f} |")
    else:
        lines.append("No ground truth (not the twin): no alignment error to report; see plots/.")
    if "cross_subject_r" in metrics:
        lines += [
            "",
            "Cross-subject agreement (mean Pearson r between two subjects' test responses at "
            f"the same template voxel): {metrics['cross_subject_r']:.3f} aligned, "
            f"{metrics['cross_subject_r_unaligned']:.3f} with scanner mm read as template mm.",
        ]
    return "\n".join(lines) + "\n"
