"""Server-side strategies as Flower ``Strategy`` objects: FedAvg, and PmcmFL on top of it.

Both sample sites reproducibly (by site index, from ``seed`` and the round, so every engine and
every strategy trains the same sites in the same round), tolerate failed sites (a round where
every site failed keeps the previous global model), evaluate on every site, and keep per-round
records: pooled test accuracy with complete inputs and fMRI alone, val accuracy, per-site
accuracy, failures and bytes sent both ways.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.strategy.aggregate import aggregate

from mindpipe.federated.client import FILLS
from mindpipe.models.pmcmfl import PrototypeLibrary
from mindpipe.reporting import report

STRATEGIES = FILLS  # fedavg / fedavg_zero share the server side; only the sites' fill differs

Results = list[tuple[ClientProxy, FitRes]]


class SiteFedAvg(FedAvg):
    """FedAvg (weights proportional to training items) over the shared weights."""

    def __init__(
        self,
        name: str,
        initial: list[np.ndarray],
        n_sites: int,
        clients_per_round: int,
        seed: int,
        report_as: str = "",
    ) -> None:
        """``report_as`` names the run whose val accuracy each round announces (see
        :mod:`mindpipe.reporting`) as ``<report_as>_val_accuracy``; default: the strategy."""
        super().__init__(
            min_available_clients=n_sites,
            initial_parameters=ndarrays_to_parameters(initial),
            accept_failures=True,
        )
        self.name, self.n_sites, self.seed = name, n_sites, seed
        self.report_as = report_as or name
        self.per_round = min(clients_per_round, n_sites)
        self.n_shared = len(initial)
        self.final, self.last_completed = initial, 0
        self.rounds: list[dict[str, float]] = []
        self._sites: dict[int, ClientProxy] = {}
        self._fit_record: dict[str, float] = {}

    # ------------------------------------------------------------------ sampling
    def sites(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        """Proxies by site index (asked once: Flower's node ids carry no site identity)."""
        if len(self._sites) < self.n_sites:
            client_manager.wait_for(self.n_sites)
            for proxy in client_manager.all().values():
                props = proxy.get_properties(GetPropertiesIns({}), timeout=None, group_id=0)
                self._sites[int(props.properties["site"])] = proxy
        return self._sites

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        proxies = self.sites(client_manager)
        rng = np.random.default_rng([self.seed, server_round])
        chosen = sorted(rng.choice(self.n_sites, size=self.per_round, replace=False))
        self._fit_record = {"bytes": float(len(chosen) * _nbytes(parameters))}
        config: dict[str, Scalar] = {"round": server_round, "strategy": self.name}
        return [(proxies[int(i)], FitIns(parameters, config)) for i in chosen]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        ins = EvaluateIns(parameters, {"strategy": self.name})
        return [(proxy, ins) for _, proxy in sorted(self.sites(client_manager).items())]

    # ------------------------------------------------------------------ aggregation
    def aggregate_fit(
        self, server_round: int, results: Results, failures: list
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self._fit_record["failures"] = float(len(failures))
        self._fit_record["bytes"] += float(sum(_nbytes(res.parameters) for _, res in results))
        if not results:
            return None, {}
        # Site order, not arrival order: floating-point sums then match across engines.
        ordered = sorted(results, key=lambda r: int(r[1].metrics["site"]))
        arrays = [(parameters_to_ndarrays(res.parameters), res.num_examples) for _, res in ordered]
        self.final = self.merge(arrays)
        self.last_completed = server_round
        return ndarrays_to_parameters(self.final), {}

    def merge(self, arrays: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        shared = [(a[: self.n_shared], n) for a, n in arrays]
        return [np.asarray(w, np.float32) for w in aggregate(shared)]

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list
    ) -> tuple[float | None, dict[str, Scalar]]:
        record = {"round": float(server_round), **self._fit_record}
        evals = sorted((res for _, res in results), key=lambda r: int(r.metrics["site"]))
        test_items = [r.num_examples for r in evals]
        val_items = [int(r.metrics["n_val"]) for r in evals]
        record["accuracy"] = _pooled(evals, "accuracy", test_items)
        record["accuracy_uni"] = _pooled(evals, "accuracy_uni", test_items)
        record["val_accuracy"] = _pooled(evals, "val_accuracy", val_items)
        record["val_accuracy_uni"] = _pooled(evals, "val_accuracy_uni", val_items)
        for r in evals:
            record[f"accuracy_{r.metrics['name']}"] = float(r.metrics["accuracy"])
        self.rounds.append(record)
        val = record["val_accuracy"]  # the last round's model is the one kept, not the best
        report(f"{self.report_as}_val_accuracy", server_round, val, keeps_best=False)
        return 1.0 - record["accuracy"], {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None  # no central data: the fMRI encoders stay at the sites


class PmcmFL(SiteFedAvg):
    """FedAvg plus the prototype library: sites send class prototypes and their counts; the
    server averages them per class weighted by counts and sends the library back down."""

    def merge(self, arrays: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        libs = [PrototypeLibrary(a[self.n_shared], a[self.n_shared + 1]) for a, _ in arrays]
        merged = PrototypeLibrary.aggregate(libs)
        return [*super().merge(arrays), merged.protos, merged.counts]


def build_strategy(name: str, *args: Any, **kwargs: Any) -> SiteFedAvg:
    """The server side of strategy ``name`` (``SiteFedAvg``'s arguments after the name)."""
    return (PmcmFL if name == "pmcmfl" else SiteFedAvg)(name, *args, **kwargs)


def _pooled(evals: list[EvaluateRes], key: str, items: list[int]) -> float:
    return pooled([float(r.metrics[key]) for r in evals], items)


def pooled(values: list[float], items: list[int]) -> float:
    """Per-site ``values`` averaged over the pooled items (sites weighted by ``items``)."""
    return sum(v * n for v, n in zip(values, items, strict=True)) / max(sum(items), 1)


def _nbytes(parameters: Parameters) -> int:
    return sum(len(t) for t in parameters.tensors)
