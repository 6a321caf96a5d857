"""MLflow tracking: one run per stage execution, tagged with its lineage."""

from mindpipe.tracking.lineage import dataset_hash, git_commit, lineage_tags
from mindpipe.tracking.runs import log_stage_run, tracking_uri

__all__ = ["dataset_hash", "git_commit", "lineage_tags", "log_stage_run", "tracking_uri"]
