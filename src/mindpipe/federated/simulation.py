"""Run federated rounds over in-process ``SiteClient``s, surviving sites that fail.

Flower's ``run_simulation`` (Ray backend) took ~10 s of start-up per simulation on the 2-core
build machine, which the test budget cannot pay four times per stage run; the rounds here call
the same ``NumPyClient.fit/evaluate`` a Flower server would, so sites are unchanged on a real
deployment. A site whose ``fit`` raises is logged and left out of that round; a round with no
successful site keeps the previous global model, so the result is always the last completed
round's.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from mindpipe.federated.client import SiteClient
from mindpipe.federated.strategies import aggregate, message_bytes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class History:
    """Per-round records and the final global message."""

    rounds: list[dict[str, float]]
    final: list[np.ndarray]
    last_completed_round: int


def simulate(
    clients: list[SiteClient], strategy: str, n_rounds: int, clients_per_round: int, seed: int
) -> History:
    """Run ``n_rounds`` of ``strategy``; sites run one after another on one thread each.

    The site models are small MLPs: on a shared 2-core machine, torch's intra-op threads cost
    ~30x more in synchronisation than they save, so one thread is used and restored after.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rounds(clients, strategy, n_rounds, clients_per_round, seed)
    finally:
        torch.set_num_threads(threads)


def _rounds(
    clients: list[SiteClient], strategy: str, n_rounds: int, clients_per_round: int, seed: int
) -> History:
    rng = np.random.default_rng(seed)
    n_shared = len(clients[0].keys)
    global_msg = clients[0].get_parameters({})
    last_completed = 0
    rounds = []
    for rnd in range(1, n_rounds + 1):
        config = {"round": rnd, "strategy": strategy}
        chosen = rng.choice(len(clients), size=min(clients_per_round, len(clients)), replace=False)
        results, failures, sent = [], 0, 0
        for i in sorted(chosen):
            sent += message_bytes(global_msg)
            try:
                arrays, n, _ = clients[i].fit(global_msg, config)
            except Exception as exc:  # a dropped site must not stop the federation
                logger.warning("round %d: site %s failed: %s", rnd, clients[i].site.name, exc)
                failures += 1
                continue
            sent += message_bytes(arrays)
            results.append((arrays, n))
        if results:
            global_msg = aggregate(strategy, results, n_shared)
            last_completed = rnd
        record = {"round": float(rnd), "failures": float(failures), "bytes": float(sent)}
        record.update(evaluate_all(clients, global_msg, strategy))
        rounds.append(record)
    return History(rounds, global_msg, last_completed)


def evaluate_all(
    clients: list[SiteClient], msg: list[np.ndarray], strategy: str
) -> dict[str, float]:
    """Pooled test accuracy (complete and fMRI-only), val accuracy, and per-site accuracy."""
    out: dict[str, float] = {}
    pooled = {"accuracy": 0.0, "accuracy_uni": 0.0, "val_accuracy": 0.0}
    n_test = n_val = 0
    for client in clients:
        _, n, test = client.evaluate(msg, {"strategy": strategy, "split": "test"})
        _, m, val = client.evaluate(msg, {"strategy": strategy, "split": "val"})
        out[f"accuracy_{client.site.name}"] = test["accuracy"]
        pooled["accuracy"] += test["accuracy"] * n
        pooled["accuracy_uni"] += test["accuracy_uni"] * n
        pooled["val_accuracy"] += val["accuracy"] * m
        n_test, n_val = n_test + n, n_val + m
    out["accuracy"] = pooled["accuracy"] / n_test
    out["accuracy_uni"] = pooled["accuracy_uni"] / n_test
    out["val_accuracy"] = pooled["val_accuracy"] / n_val
    return out
