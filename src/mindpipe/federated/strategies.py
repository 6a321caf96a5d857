"""Server-side aggregation: FedAvg, and PmcmFL (FedAvg + the prototype library).

Both take what sites returned from ``SiteClient.fit`` (weights, then for PmcmFL the local
prototypes and their counts) and give what goes back down next round.
"""

from __future__ import annotations

import numpy as np

from mindpipe.models.pmcmfl import PrototypeLibrary

STRATEGIES = ("fedavg", "pmcmfl")

FitResult = tuple[list[np.ndarray], int]  # (arrays a site returned, its training items)


def weighted_average(results: list[FitResult], n_shared: int) -> list[np.ndarray]:
    """FedAvg: the shared weights averaged with weights proportional to training items."""
    total = sum(n for _, n in results)
    return [
        sum(arrays[i] * (n / total) for arrays, n in results).astype(np.float32)
        for i in range(n_shared)
    ]


def aggregate(strategy: str, results: list[FitResult], n_shared: int) -> list[np.ndarray]:
    """The next global message: averaged weights, plus PmcmFL's aggregated prototype library."""
    weights = weighted_average(results, n_shared)
    if strategy == "fedavg":
        return weights
    libs = [PrototypeLibrary(arrays[n_shared], arrays[n_shared + 1]) for arrays, _ in results]
    merged = PrototypeLibrary.aggregate(libs)
    return [*weights, merged.protos, merged.counts]


def message_bytes(arrays: list[np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays))
