"""The twin: a synthetic fMRI dataset whose generating model is known (mindpipe's data_gen).

Procedural shape images with captions, a template brain and per-subject anatomies, retinotopic
(pRF) and semantic voxels, an HRF, drift and noise, written as a BIDS-like dataset
(docs/data-format.md) plus its ground truth under ``derivatives/twin-truth/``.

>>> from mindpipe.twin import generate, load_truth
>>> data = generate("data", profile="tiny", seed=0)          # doctest: +SKIP
>>> truth = load_truth(data, "sub-01")                       # doctest: +SKIP
"""

from mindpipe.twin.anatomy import SubjectTransform
from mindpipe.twin.config import PROFILES, TwinConfig, get_profile
from mindpipe.twin.truth import SubjectTruth, load_truth, subject_to_template
from mindpipe.twin.writer import generate

__all__ = [
    "PROFILES",
    "SubjectTransform",
    "SubjectTruth",
    "TwinConfig",
    "generate",
    "get_profile",
    "load_truth",
    "subject_to_template",
]
