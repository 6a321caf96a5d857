"""FedAvg vs PmcmFL over several seeds: is a difference bigger than the seed-to-seed spread?

    .venv/bin/python benchmarks/federated_seeds.py [--seeds 0 1 2] [--params params.yaml]
        [--betas artifacts/preprocess] [--features artifacts/features]

Runs the ``federated`` stage's federations (strategies x missing rates from params.yaml) on the
main job's betas and CLIP features once per seed. The seed sets the sites' class skew and
missing-modality draws, the initial weights and the client sampling, as ``base.seed`` does in
the stage. Prints complete and fMRI-only test accuracy of the last round per seed, their mean,
and PmcmFL minus FedAvg per seed. Nothing is selected on these numbers.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from mindpipe.federated.data import load_sites, skew_and_mask
from mindpipe.params import load_params, parse_section
from mindpipe.recipes.federated import FederatedParams, run_federation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--betas", type=Path, default=Path("artifacts/preprocess"))
    parser.add_argument("--features", type=Path, default=Path("artifacts/features"))
    args = parser.parse_args()
    logging.disable(logging.INFO)  # Flower logs every message
    params = parse_section(FederatedParams, load_params(args.params).get("federated"), "federated")
    complete, classes = load_sites(args.betas, args.features)
    results: dict[tuple[str, float, str], list[float]] = {}
    for seed in args.seeds:
        for rate in params.missing_rates:
            sites = [
                skew_and_mask(site, len(classes), params.dirichlet_alpha, rate, seed + i)
                for i, site in enumerate(complete)
            ]
            for strategy in params.strategies:
                with tempfile.TemporaryDirectory() as state_dir:
                    history, _ = run_federation(
                        sites, len(classes), strategy, params, seed, Path(state_dir)
                    )
                final = history.rounds[-1]
                for key in ("accuracy", "accuracy_uni"):
                    results.setdefault((strategy, rate, key), []).append(final[key])
                print(
                    f"seed {seed} {strategy} m={rate:.1f}: {final['accuracy']:.3f} complete, "
                    f"{final['accuracy_uni']:.3f} fMRI only",
                    flush=True,
                )
    print(
        f"\n| strategy | missing rate | inputs | {' | '.join(f'seed {s}' for s in args.seeds)} "
        "| mean |"
    )
    print(f"|---|---|---|{'---|' * len(args.seeds)}---|")
    for (strategy, rate, key), values in results.items():
        inputs = "complete" if key == "accuracy" else "fMRI only"
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {strategy} | {rate:.1f} | {inputs} | {cells} | {np.mean(values):.3f} |")
    if {"pmcmfl", "fedavg"} <= set(params.strategies):
        print("\nPmcmFL minus FedAvg, per seed:")
        for rate in params.missing_rates:
            for key in ("accuracy", "accuracy_uni"):
                diff = np.subtract(results["pmcmfl", rate, key], results["fedavg", rate, key])
                print(f"  m={rate:.1f} {key}: {' '.join(f'{d:+.3f}' for d in diff)}")


if __name__ == "__main__":
    main()
