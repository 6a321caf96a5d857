"""Optuna sweeps over any training stage's params (``mindpipe sweep``)."""

from mindpipe.sweep.spec import SweepSpec, load_sweep
from mindpipe.sweep.study import SweepResult, run_sweep

__all__ = ["SweepResult", "SweepSpec", "load_sweep", "run_sweep"]
