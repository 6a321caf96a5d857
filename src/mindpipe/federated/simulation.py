"""Run a federation with Flower: its simulation engine, or its server loop in one process.

* ``simulation``: ``flwr.simulation.run_simulation`` (a ``ServerApp`` and a ``ClientApp`` on
  Ray's virtual nodes, clients rebuilt for every message), the deployment path.
* ``inprocess``: Flower's own ``Server`` loop over ``ClientProxy`` objects that call the sites
  directly: the same strategy, clients and rounds without Ray's ~10 s start-up, for tests.

Both run the sites one at a time on one torch thread: the site models are small MLPs, and on a
shared 2-core machine torch's intra-op threads cost more in synchronisation than they save.
With the strategies' site-indexed sampling and ordering, both engines give the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from flwr.common import (
    Code,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
)
from flwr.server import Server, ServerApp, ServerAppComponents, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from mindpipe.federated.client import SiteClient
from mindpipe.federated.strategies import SiteFedAvg

MakeClient = Callable[[int], SiteClient]  # site index -> that site's client


@dataclasses.dataclass
class History:
    """Per-round records and the last completed round's global message."""

    rounds: list[dict[str, float]]
    final: list[np.ndarray]
    last_completed_round: int


def simulate(
    make_client: MakeClient, n_sites: int, strategy: SiteFedAvg, n_rounds: int, engine: str
) -> History:
    """Run ``n_rounds`` of ``strategy`` over sites ``0..n_sites-1`` on ``engine`` (one of
    ``ENGINES``; ``FederatedParams`` checks it)."""
    with one_torch_thread():
        _ENGINE_RUNNERS[engine](make_client, n_sites, strategy, n_rounds)
    return History(strategy.rounds, strategy.final, strategy.last_completed)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread (see the module docstring), restored afterwards; scoring
    a saved federation uses it too, so its sums match the simulation's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_inprocess(
    make_client: MakeClient, n_sites: int, strategy: SiteFedAvg, n_rounds: int
) -> None:
    manager = SimpleClientManager()
    for i in range(n_sites):
        manager.register(LocalProxy(str(i), make_client(i)))
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)  # sites share torch's global RNG: one at a time, reproducibly
    server.fit(num_rounds=n_rounds, timeout=None)


def _run_flower_simulation(
    make_client: MakeClient, n_sites: int, strategy: SiteFedAvg, n_rounds: int
) -> None:
    import ray
    from flwr.client import ClientApp
    from flwr.simulation import run_simulation

    # Keep Ray's default device handling without its FutureWarning about changing it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    def client_fn(context):
        torch.set_num_threads(1)
        return make_client(int(context.node_config["partition-id"])).to_client()

    def server_fn(context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=n_rounds))

    try:
        run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=ClientApp(client_fn=client_fn),
            num_supernodes=n_sites,
            # One actor: sites run one after another, as in the in-process engine.
            backend_config={
                "client_resources": {"num_cpus": 1},
                "init_args": {"num_cpus": 1, "log_to_driver": False},
            },
        )
    finally:
        if ray.is_initialized():  # a crashed run leaves Ray's threads holding the process
            ray.shutdown()
    if strategy.last_completed == 0 and not strategy.rounds:
        raise RuntimeError("the Flower simulation ran no round; see the log above for why")


_ENGINE_RUNNERS = {"simulation": _run_flower_simulation, "inprocess": _run_inprocess}
ENGINES = tuple(_ENGINE_RUNNERS)


class LocalProxy(ClientProxy):
    """A ``ClientProxy`` that calls a site's client in this process."""

    def __init__(self, cid: str, client: SiteClient) -> None:
        super().__init__(cid)
        self.client = client.to_client()

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        return self.client.get_properties(ins)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        return self.client.get_parameters(ins)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        return self.client.fit(ins)

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        return self.client.evaluate(ins)

    def reconnect(self, ins, timeout: float | None, group_id: int | None) -> DisconnectRes:
        return DisconnectRes(reason=Code.OK.name)
