"""The stage registry: every pipeline stage declared once.

dvc.yaml (``mindpipe compile``), the CLI (``mindpipe stage NAME``) and the tests all read this
list. A stage is a plain function with keyword arguments named after its inputs, plus
``out_dir`` (a temporary directory committed atomically on success), ``params`` (its params.yaml
section as a frozen dataclass) and ``base`` (the shared ``base:`` section). It returns a flat
dict of scalar metrics, which the runner writes to ``<out>/metrics.json`` and logs to MLflow.

Functions and params classes are named by dotted path and imported only when the stage runs,
so listing stages (or compiling dvc.yaml) never pays for torch or Great Expectations imports.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mindpipe.exceptions import MindpipeError, ParamsError
from mindpipe.params import BaseParams, parse_section

DATA = "@data"  # an input that names the raw dataset (base.data_dir) rather than a stage


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one run of the stage needs on a cluster node (KFP requests use the same values)."""

    cpu: str = "2"
    memory: str = "8Gi"
    gpu: int = 0


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """A saved model, loaded, with its validation scores (higher is better) and an example
    input/output pair (numpy arrays) from which the registry infers the model's signature."""

    model: Any
    metrics: dict[str, float]
    example_input: Any
    example_output: Any


@dataclasses.dataclass(frozen=True)
class Stage:
    """One DAG node.

    Attributes
    ----------
    name : str
        One name everywhere: stage, params section, artifacts folder, MLflow run name.
    func, params_cls : str
        ``module:attribute`` of the stage function and its params dataclass.
    inputs : dict
        Keyword argument -> ``DATA`` or the name of the stage whose output folder it reads.
    after : tuple of str
        Stages that must have succeeded first (gates) without their output being read.
    code : tuple of str
        Source folders under ``src/mindpipe`` whose change reruns the stage.
    plots : tuple of str
        Files inside the output folder that ``dvc plots`` and MLflow show.
    model : str or None
        Subfolder of the output holding the stage's model; the runner logs it to MLflow and
        registers it as a version of ``mindpipe-<name>`` (alias ``challenger``).
    scorer : str or None
        ``module:function`` that loads a saved model folder and scores it on the validation
        split, ``(model_dir, *, params, base, **inputs) -> ModelCard`` (the stage's inputs, by
        the same keywords); the registry records its metrics and signature, and promotion
        compares two versions with it on the same data.
    """

    name: str
    description: str
    func: str
    params_cls: str
    inputs: dict[str, str]
    code: tuple[str, ...]
    after: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    model: str | None = None
    scorer: str | None = None
    resources: Resources = Resources()

    def load_func(self) -> Callable[..., dict[str, float]]:
        return _import(self.func)

    def load_params_cls(self) -> type:
        return _import(self.params_cls)

    def load_scorer(self) -> Callable[..., ModelCard]:
        if self.scorer is None:
            raise MindpipeError(f"stage {self.name!r} declares no model scorer")
        return _import(self.scorer)

    def upstream(self) -> tuple[str, ...]:
        """Names of the stages this one waits for."""
        reads = tuple(src for src in self.inputs.values() if src != DATA)
        return reads + tuple(s for s in self.after if s not in reads)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="validate_raw",
        description="Gate the raw dataset: layout, NIfTI headers, events and stimulus tables "
        "(Great Expectations).",
        func="mindpipe.validate:validate_raw",
        params_cls="mindpipe.validate:ValidateRawParams",
        inputs={"data_dir": DATA},
        code=("validate", "io"),
        resources=Resources(cpu="1", memory="2Gi"),
    ),
    Stage(
        name="preprocess",
        description="Per subject: high-pass, single-trial GLM betas (LSS, canonical HRF), "
        "z-score per session, visual mask, reliable-voxel selection, test repeats averaged.",
        func="mindpipe.preprocess:preprocess",
        params_cls="mindpipe.preprocess:PreprocessParams",
        inputs={"data_dir": DATA},
        after=("validate_raw",),
        code=("preprocess", "io", "validate"),
        plots=("plots/reliability.png",),
        resources=Resources(cpu="2", memory="8Gi"),
    ),
    Stage(
        name="align",
        description="Per subject: register the T1w image to the template (the twin's, or "
        "MNI152) by affine + SyN, resample the selected betas into template space; alignment "
        "error against the twin's true mapping, QC overlays.",
        func="mindpipe.align:align",
        params_cls="mindpipe.align:AlignParams",
        inputs={"data_dir": DATA, "betas_dir": "preprocess"},
        code=("align", "io"),
        plots=("plots/qc.png", "plots/alignment_error.png"),
        resources=Resources(cpu="2", memory="4Gi"),
    ),
    Stage(
        name="baseline",
        description="Ridge regression from betas to stimulus feature vectors, one model per "
        "subject, alpha chosen on the validation split.",
        func="mindpipe.models.baselines:fit_ridge_baseline",
        params_cls="mindpipe.models.baselines:RidgeParams",
        inputs={"betas_dir": "preprocess"},
        code=("models", "features"),
        model="ridge/models",
        scorer="mindpipe.models.baselines:score_saved_ridge",
        resources=Resources(cpu="2", memory="4Gi"),
    ),
    Stage(
        name="oracle",
        description="Ideal observer from the twin's ground truth: the best identification any "
        "decoder could reach at the twin's noise level.",
        func="mindpipe.evaluate.oracle:fit_oracle",
        params_cls="mindpipe.evaluate.oracle:OracleParams",
        inputs={"data_dir": DATA, "betas_dir": "preprocess"},
        code=("evaluate", "twin"),
        resources=Resources(cpu="1", memory="4Gi"),
    ),
    Stage(
        name="mlip",
        description="Pretrain the project's CLIP with MLIP (frequency view, token-level "
        "alignment, token merging) and ablate it against plain CLIP and merge ratios.",
        func="mindpipe.recipes.mlip:pretrain_mlip",
        params_cls="mindpipe.recipes.mlip:MLIPParams",
        inputs={"data_dir": DATA},
        after=("validate_raw",),
        code=("models", "recipes", "twin"),
        plots=("plots/ablation.png",),
        model="model",
        scorer="mindpipe.recipes.mlip:score_saved_model",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="features",
        description="CLIP embeddings (pooled + tokens) of every stimulus image and caption, "
        "from a cache keyed by the model's fingerprint; MLIP's model or local open_clip weights.",
        func="mindpipe.features.stage:cache_features",
        params_cls="mindpipe.features.stage:FeaturesParams",
        inputs={"data_dir": DATA, "mlip_dir": "mlip"},
        after=("validate_raw",),
        code=("features", "models"),
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="litemind",
        description="Lite-Mind's DFT backbone and MindEye's residual MLP, per subject, trained "
        "contrastively onto the cached CLIP image embeddings; epoch chosen on validation.",
        func="mindpipe.recipes.litemind:train_litemind",
        params_cls="mindpipe.recipes.litemind:LiteMindParams",
        inputs={"betas_dir": "preprocess", "features_dir": "features"},
        code=("models", "recipes"),
        model="litemind/models",
        scorer="mindpipe.recipes.litemind:score_saved_litemind",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="mindtuner",
        description="MindTuner: pretrain on every subject but one (per-subject input maps, "
        "shared backbone), fine-tune on the held-out subject's first trials with LoRA + "
        "Skip-LoRA; against the same network and Lite-Mind from scratch; fMRI -> caption "
        "retrieval through the image pivot.",
        func="mindpipe.recipes.mindtuner:train_mindtuner",
        params_cls="mindpipe.recipes.mindtuner:MindTunerParams",
        inputs={"betas_dir": "preprocess", "features_dir": "features", "litemind_dir": "litemind"},
        code=("models", "recipes"),
        plots=("plots/fewshot_curve.png",),
        model="models/mindtuner",
        scorer="mindpipe.recipes.mindtuner:score_saved_mindtuner",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="wills",
        description="Wills Aligner on template-space voxels: shared network, then a mixture of "
        "brain experts with a global router (two stages), for a held-out subject with few "
        "trials; against no experts and no alignment.",
        func="mindpipe.recipes.wills:train_wills",
        params_cls="mindpipe.recipes.wills:WillsParams",
        inputs={"betas_dir": "preprocess", "aligned_dir": "align", "features_dir": "features"},
        code=("models", "recipes"),
        plots=("plots/fewshot_curve.png",),
        model="models/wills",
        scorer="mindpipe.recipes.wills:score_saved_wills",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="reconstruct",
        description="unCLIP-style diffusers generator trained on the train images' CLIP "
        "embeddings; reconstructs test images from fMRI-decoded embeddings, starting from a "
        "blurry low-level decode of the betas (PixCorr, SSIM).",
        func="mindpipe.recipes.reconstruct:reconstruct",
        params_cls="mindpipe.recipes.reconstruct:ReconstructParams",
        inputs={
            "data_dir": DATA,
            "betas_dir": "preprocess",
            "features_dir": "features",
            "decoder_dir": "litemind",
        },
        code=("models", "recipes"),
        plots=("plots/grid.png",),
        model="model",
        scorer="mindpipe.recipes.reconstruct:score_saved_reconstruct",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="reconstruct_fewshot",
        description="Reconstructions from the few-data decoders (MindTuner, Wills) of the "
        "held-out subject with the reconstruct stage's generator, starting from a blurry "
        "decode fitted on the same first trials (PixCorr, SSIM).",
        func="mindpipe.recipes.reconstruct_fewshot:reconstruct_fewshot",
        params_cls="mindpipe.recipes.reconstruct_fewshot:ReconstructFewShotParams",
        inputs={
            "data_dir": DATA,
            "betas_dir": "preprocess",
            "features_dir": "features",
            "reconstruct_dir": "reconstruct",
            "mindtuner_dir": "mindtuner",
            "wills_dir": "wills",
        },
        code=("models", "recipes"),
        plots=("plots/grid.png",),
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="evaluate",
        description="Top-1 retrieval among 300 (both directions) and zero-shot for every "
        "decoder, as a ratio to the oracle; MindEye2's image metrics of the reconstructions; "
        "comparison tables and plot.",
        func="mindpipe.evaluate.report:evaluate",
        params_cls="mindpipe.evaluate.report:EvaluateParams",
        inputs={
            "data_dir": DATA,
            "features_dir": "features",
            "baseline_dir": "baseline",
            "litemind_dir": "litemind",
            "mindtuner_dir": "mindtuner",
            "wills_dir": "wills",
            "oracle_dir": "oracle",
            "reconstruct_dir": "reconstruct",
            "reconstruct_fewshot_dir": "reconstruct_fewshot",
        },
        code=("evaluate",),
        plots=("plots/retrieval.png",),
        resources=Resources(cpu="1", memory="2Gi"),
    ),
    Stage(
        name="neuroclips",
        description="fMRI -> video (8 FPS): Perception Reconstructor (blurry video), Semantics "
        "Reconstructor (keyframe via the reconstruct generator, caption), AnimateDiff-style "
        "video diffusion with a SparseCtrl-style control net; multi-fMRI fusion into videos of "
        "up to 6 s; ablations, retrieval baseline.",
        func="mindpipe.recipes.neuroclips:neuroclips",
        params_cls="mindpipe.recipes.neuroclips:NeuroClipsParams",
        inputs={
            "data_dir": DATA,
            "betas_dir": "preprocess",
            "features_dir": "features",
            "mlip_dir": "mlip",
            "reconstruct_dir": "reconstruct",
        },
        code=("models", "recipes", "evaluate", "io", "features"),
        plots=("plots/grid.png", "plots/sample.gif", "plots/sample_scene.gif"),
        model="models",
        scorer="mindpipe.recipes.neuroclips:score_saved_reconstructors",
        resources=Resources(cpu="4", memory="16Gi", gpu=1),
    ),
    Stage(
        name="federated",
        description="FedAvg vs PmcmFL (prototype library, masks, calibrated loss, proximal "
        "term) over sites = subjects with missing modalities; category classification.",
        func="mindpipe.recipes.federated:train_federated",
        params_cls="mindpipe.recipes.federated:FederatedParams",
        inputs={"betas_dir": "preprocess", "features_dir": "features"},
        code=("federated", "models", "recipes"),
        plots=("plots/accuracy_vs_round.png",),
        model="models",
        scorer="mindpipe.recipes.federated:score_saved_federation",
        resources=Resources(cpu="2", memory="8Gi", gpu=0),
    ),
)


def get_stage(name: str) -> Stage:
    """The registered stage called ``name``; an unknown name lists the known ones."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise MindpipeError(f"unknown stage {name!r}; known stages: {[s.name for s in STAGES]}")


def stage_out_dir(name: str, base: BaseParams) -> Path:
    return Path(base.artifacts_dir) / name


def resolve_inputs(
    stage: Stage, base: BaseParams, given: dict[str, Path] | None = None
) -> dict[str, Path]:
    """Map each input keyword to its path; a missing one names the stage that makes it.

    ``given`` paths (from an orchestrator such as KFP) win over data/ and artifacts/; the
    orchestrator then also owns the ordering, so ``after`` gates are not checked on disk.
    """
    given = given or {}
    unknown = sorted(set(given) - set(stage.inputs))
    if unknown:
        raise MindpipeError(f"stage {stage.name!r}: unknown input(s) {unknown}")
    paths: dict[str, Path] = {}
    for arg, src in stage.inputs.items():
        if arg in given:
            path = Path(given[arg])
        else:
            path = Path(base.data_dir) if src == DATA else stage_out_dir(src, base)
        if not path.exists():
            hint = (
                "generate it with `mindpipe twin generate` or `dvc pull data.dvc`"
                if src == DATA
                else f"run `mindpipe stage {src}` (or `dvc repro {src}`) first"
            )
            raise MindpipeError(f"stage {stage.name!r}: input {arg} not found at '{path}'; {hint}")
        paths[arg] = path
    for gate in stage.after:
        if not given and not stage_out_dir(gate, base).exists():
            raise MindpipeError(
                f"stage {stage.name!r} runs after {gate!r}, whose output "
                f"'{stage_out_dir(gate, base)}' is missing; run `mindpipe stage {gate}` first"
            )
    return paths


def parse_all(raw: dict[str, Any]) -> tuple[BaseParams, dict[str, Any]]:
    """Parse every section of params.yaml, so a typo anywhere fails the first stage that runs.

    Returns the ``base`` section and ``{stage name: params dataclass}``; all problems are
    reported together in one ParamsError.
    """
    known = {"base"} | {s.name for s in STAGES}
    problems = [
        f"{name}: unknown section (allowed: {sorted(known)})" for name in raw if name not in known
    ]
    parsed: dict[str, Any] = {}
    for name, cls in [("base", BaseParams)] + [(s.name, s.load_params_cls()) for s in STAGES]:
        try:
            parsed[name] = parse_section(cls, raw.get(name), name)
        except ParamsError as exc:
            problems.append(str(exc).removeprefix("invalid params:").strip())
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))
    return parsed.pop("base"), parsed


def _import(dotted: str) -> Any:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)
