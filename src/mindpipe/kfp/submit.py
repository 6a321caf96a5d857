"""Upload a compiled pipeline to a KFP server and start a run."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import yaml

from mindpipe.exceptions import MindpipeError


def dvc_data_hash(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 DVC recorded for data/: a run input, so KFP's cache never crosses datasets."""
    path = Path(dvc_file)
    if not path.is_file():
        raise MindpipeError(f"'{path}' not found; track the dataset with `dvc add data` first")
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    if not md5:
        raise MindpipeError(f"'{path}' has no outs[0].md5")
    return str(md5)


def check_reachable(host: str, timeout: float) -> None:
    """Fail fast with the host's name instead of a kfp/urllib3 retry traceback."""
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered (auth errors are reported by kfp.Client below)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MindpipeError(f"KFP host {host} is unreachable: {reason}") from exc


def submit(
    host: str,
    package: Path,
    arguments: dict[str, str],
    experiment: str = "mindpipe",
    timeout: float = 10.0,
) -> str:
    """Create a run of ``package`` on ``host``; return its run id."""
    import kfp

    if not package.is_file():
        raise MindpipeError(f"pipeline package '{package}' not found; run `mindpipe kfp compile`")
    check_reachable(host, timeout)
    try:
        client = kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, experiment_name=experiment
        )
    except Exception as exc:  # kfp raises ApiException, urllib3 and requests errors alike
        raise MindpipeError(f"KFP host {host} rejected the run: {exc}") from exc
    return str(result.run_id)
