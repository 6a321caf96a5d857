"""One site of the federation as a Flower ``NumPyClient``.

The same object serves a real site (``flwr.client.ClientApp(client_fn=lambda ctx:
SiteClient(...).to_client())``) and the in-process simulation. What travels: the shared model
weights (every site keeps its own fMRI encoder, since voxel spaces differ and never leave the
site) and, for PmcmFL, the prototype library. Config keys: ``round`` and ``strategy``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from flwr.client import NumPyClient

from mindpipe.federated.data import Site, Split
from mindpipe.models.pmcmfl import MODALITIES, PmcmFLClassifier, PrototypeLibrary

FUSION = len(MODALITIES)  # index of the fused representation in PrototypeLibrary


@dataclasses.dataclass(frozen=True)
class LocalTraining:
    """How a site trains in one round."""

    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    proximal_weight: float = 0.1
    modal_proximal_weight: float = 0.1
    temperature: float = 0.1
    proximal_start_round: int = 2


class SiteClient(NumPyClient):
    """Trains the site's copy of the model; ``fail_round`` makes ``fit`` raise (a dropped site)."""

    def __init__(
        self,
        site: Site,
        model: PmcmFLClassifier,
        train: LocalTraining,
        seed: int,
        fail_round: int = 0,
    ) -> None:
        self.site, self.model, self.train, self.seed = site, model, train, seed
        self.fail_round = fail_round
        self.keys = model.shared_keys()
        n_classes, dim = model.cfg.n_classes, model.cfg.dim
        self.library = PrototypeLibrary.empty(n_classes, dim)

    # ---------------------------------------------------------------- Flower interface
    def get_parameters(self, config: dict) -> list[np.ndarray]:
        state = self.model.state_dict()
        return [state[k].detach().cpu().numpy() for k in self.keys]

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list, int, dict]:
        rnd, strategy = int(config["round"]), str(config["strategy"])
        if rnd == self.fail_round:
            raise RuntimeError(f"site {self.site.name} dropped out in round {rnd} (injected)")
        self._load(parameters, strategy)
        loss = self._train_round(rnd, strategy)
        out = self.get_parameters(config)
        if strategy == "pmcmfl":
            local = self._local_library()
            out += [local.protos, local.counts]
        return out, len(self.site.train), {"loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        strategy = str(config["strategy"])
        self._load(parameters, strategy)
        split: Split = getattr(self.site, str(config.get("split", "test")))
        uni = dataclasses.replace(
            split, present=np.eye(len(MODALITIES), dtype=bool)[[0] * len(split)]
        )
        acc = self.accuracy(split, strategy)
        acc_uni = self.accuracy(uni, strategy)
        return 1.0 - acc, len(split), {"accuracy": acc, "accuracy_uni": acc_uni}

    # ---------------------------------------------------------------- internals
    def _load(self, parameters: list[np.ndarray], strategy: str) -> None:
        n = len(self.keys)
        state = OrderedDict(
            (k, torch.from_numpy(np.asarray(a)))
            for k, a in zip(self.keys, parameters[:n], strict=True)
        )
        self.model.load_state_dict(state, strict=False)
        if strategy == "pmcmfl" and len(parameters) > n:
            self.library = PrototypeLibrary(
                np.asarray(parameters[n]), np.asarray(parameters[n + 1])
            )

    def _tensors(self, split: Split) -> list[torch.Tensor]:
        return [torch.from_numpy(np.asarray(a)) for a in dataclasses.astuple(split)]

    def _train_round(self, rnd: int, strategy: str) -> float:
        cfg = self.train
        torch.manual_seed(self.seed * 1000 + rnd)
        fmri, image, text, labels, present = self._tensors(self.site.train)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        protos = torch.from_numpy(self.library.protos)
        known = torch.from_numpy(self.library.known())
        use_proximal = strategy == "pmcmfl" and rnd >= cfg.proximal_start_round
        self.model.train()
        total, n = 0.0, 0
        for _ in range(cfg.local_epochs):
            for idx in torch.randperm(len(labels)).split(cfg.batch_size):
                y, mask = labels[idx], present[idx]
                reps = self.model.encode(fmri[idx], image[idx], text[idx])
                if strategy == "pmcmfl":
                    filled = _fill_with_prototypes(reps, mask, protos, known, y)
                else:
                    filled = reps * mask[..., None]
                fused = self.model.fuse(filled)
                loss = F.cross_entropy(self.model.head(fused), y)
                if use_proximal:
                    loss = loss + self._proximal(reps, fused, mask, y, protos, known)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        return total / max(n, 1)

    def _proximal(
        self,
        reps: torch.Tensor,
        fused: torch.Tensor,
        mask: torch.Tensor,
        y: torch.Tensor,
        protos: torch.Tensor,
        known: torch.Tensor,
    ) -> torch.Tensor:
        """Prototype InfoNCE: each representation against every known class prototype.

        Columns are all classes (not the batch's labels), so duplicate labels in a batch are
        not false negatives. Fusion term on every item; per-modality terms on present ones.
        """
        cfg = self.train
        loss = cfg.proximal_weight * _proto_nce(
            fused, protos[FUSION], known[FUSION], y, cfg.temperature
        )
        for m in range(len(MODALITIES)):
            rows = mask[:, m]
            if rows.any():
                term = _proto_nce(reps[rows, m], protos[m], known[m], y[rows], cfg.temperature)
                loss = loss + cfg.modal_proximal_weight * term
        return loss

    @torch.no_grad()
    def _local_library(self) -> PrototypeLibrary:
        """Prototypes from the site's own training items, after local training (eval mode)."""
        self.model.eval()
        fmri, image, text, labels, present = self._tensors(self.site.train)
        reps = self.model.encode(fmri, image, text)
        fused = self.model.fuse(reps)
        return PrototypeLibrary.from_reps(
            reps.numpy(), fused.numpy(), labels.numpy(), present.numpy(), self.model.cfg.n_classes
        )

    @torch.no_grad()
    def accuracy(self, split: Split, strategy: str) -> float:
        """Top-1 accuracy; PmcmFL fills missing modalities with the prototypes of the class
        whose prototypes lie nearest the present representations, FedAvg with zeros."""
        self.model.eval()
        fmri, image, text, labels, present = self._tensors(split)
        reps = self.model.encode(fmri, image, text)
        if strategy == "pmcmfl":
            protos = torch.from_numpy(self.library.protos)
            known = torch.from_numpy(self.library.known())
            guess = _nearest_class(reps, present, protos, known)
            filled = _fill_with_prototypes(reps, present, protos, known, guess)
        else:
            filled = reps * present[..., None]
        pred = self.model.head(self.model.fuse(filled)).argmax(1)
        return float((pred == labels).float().mean())


def _fill_with_prototypes(
    reps: torch.Tensor,
    mask: torch.Tensor,
    protos: torch.Tensor,
    known: torch.Tensor,
    cls: torch.Tensor,
) -> torch.Tensor:
    """Prototype mask: missing slots take the global prototype of ``cls`` (zero if unknown)."""
    fill = protos[: len(MODALITIES), cls].transpose(0, 1)  # (n, 3, dim)
    fill = fill * known[: len(MODALITIES), cls].T[..., None]
    return torch.where(mask[..., None], reps, fill)


def _nearest_class(
    reps: torch.Tensor, mask: torch.Tensor, protos: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """Class maximising the mean cosine between present reps and that modality's prototypes."""
    sims = torch.einsum(
        "nmd,mcd->nmc", F.normalize(reps, dim=-1), F.normalize(protos[: len(MODALITIES)], dim=-1)
    )
    sims = sims.masked_fill(~known[: len(MODALITIES)][None], -2.0) * mask[..., None]
    return (sims.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)).argmax(1)


def _proto_nce(
    reps: torch.Tensor, protos: torch.Tensor, known: torch.Tensor, y: torch.Tensor, temp: float
) -> torch.Tensor:
    logits = F.normalize(reps, dim=-1) @ F.normalize(protos, dim=-1).T / temp
    logits = logits.masked_fill(~known[None], -1e4)
    rows = known[y]
    if not rows.any():
        return reps.sum() * 0.0
    return F.cross_entropy(logits[rows], y[rows])
