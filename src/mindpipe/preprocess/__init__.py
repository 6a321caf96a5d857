"""Raw BOLD -> single-trial betas (LSS), z-scored per session, reliability-selected voxels."""

from mindpipe.preprocess.glm import (
    dct_basis,
    lss,
    percent_signal_change,
    run_betas,
    trial_regressors,
)
from mindpipe.preprocess.outputs import average_repeats, plot_reliability
from mindpipe.preprocess.stage import PreprocessParams, preprocess
from mindpipe.preprocess.voxels import SessionZScorer, VoxelSelector, ncsnr

__all__ = [
    "PreprocessParams",
    "SessionZScorer",
    "VoxelSelector",
    "average_repeats",
    "dct_basis",
    "lss",
    "ncsnr",
    "percent_signal_change",
    "plot_reliability",
    "preprocess",
    "run_betas",
    "trial_regressors",
]
