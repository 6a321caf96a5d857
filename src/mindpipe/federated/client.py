"""One site of the federation as a Flower ``NumPyClient``.

The same object serves a real site (``flwr.client.ClientApp(client_fn=...)``), Flower's
simulation engine and the in-process engine (``federated.simulation``). What travels: the shared
model weights and, for PmcmFL, the prototype library. The site's own fMRI encoder (voxel spaces
differ) never leaves the site: it lives in the site's ``state_file``, so a client rebuilt for
every message (as Flower's simulation does) resumes where the last round left it.

How a missing modality's slot is filled (config ``strategy``):

* ``pmcmfl``: the image and caption slots get the server's prototype (aggregated over sites)
  of the item's class (training; the paper's "masking") or of the class nearest the present
  representations (inference). fMRI prototypes are the site's own: each site has its own fMRI
  encoder, so another site's fMRI prototypes lie in an unrelated space (averaged across sites,
  they pulled every encoder towards vectors none of them produces). They stay at the site,
  beside its encoder, and serve its proximal term and its class guess at inference. A missing
  fMRI slot gets noise, as FedAvg's: the paper's modalities are all strong, but here fMRI is
  the weak one, and its own-class prototype, a clean class code, taught the head to trust
  fMRI more than real fMRI deserves (default twin, 50% missing, seed 0: val accuracy 0.750
  with the prototype fill, 0.882 with noise);
* ``fedavg``: an N(0, 1) vector, the paper's baseline without prototypes;
* ``fedavg_zero``: zeros, which the fusion's LayerNorm turns into a constant "missing" code.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.client import NumPyClient
from safetensors.torch import load_file, save_file

from mindpipe.federated.data import Site, Split
from mindpipe.models.pmcmfl import MODALITIES, PmcmFLClassifier, PrototypeLibrary

FUSION = len(MODALITIES)  # index of the fused representation in PrototypeLibrary
OWN = MODALITIES.index("fmri")  # prototypes of the site's own encoder: they never leave it
OWN_KEYS = ("own_prototypes", "own_prototype_counts")  # where the state file keeps them
FILLS = ("pmcmfl", "fedavg", "fedavg_zero")  # strategy names, by how missing slots are filled


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
    """Site ``index`` of the federation; ``fail_round`` makes ``fit`` raise (a dropped site)."""

    def __init__(
        self,
        site: Site,
        index: int,
        model: PmcmFLClassifier,
        train: LocalTraining,
        seed: int,
        state_file: Path,
        fail_round: int = 0,
    ) -> None:
        self.site, self.index, self.model, self.train, self.seed = site, index, model, train, seed
        self.state_file, self.fail_round = Path(state_file), fail_round
        self.keys = model.shared_keys()
        n_classes, dim = model.cfg.n_classes, model.cfg.dim
        self.library = PrototypeLibrary.empty(n_classes, dim)
        self.own: tuple[np.ndarray, np.ndarray] | None = None  # (C, dim) fMRI prototypes, counts
        if self.state_file.exists():
            state = load_file(self.state_file)
            if OWN_KEYS[0] in state:
                self.own = tuple(state.pop(k).numpy() for k in OWN_KEYS)
            self.model.load_state_dict(state, strict=False)

    # ---------------------------------------------------------------- Flower interface
    def get_properties(self, config: dict) -> dict:
        return {"site": self.index, "name": self.site.name}

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
            self.own = (local.protos[OWN].copy(), local.counts[OWN].copy())
            local.protos[OWN], local.counts[OWN] = 0.0, 0.0  # the server gets no fMRI prototypes
            out += [local.protos, local.counts]
        self._save_private()
        return out, len(self.site.train), {"loss": loss, "site": self.index}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Test and val accuracy, with complete inputs and with fMRI alone."""
        strategy = str(config["strategy"])
        self._load(parameters, strategy)
        test, val = self.site.test, self.site.val
        metrics = {
            "site": self.index,
            "name": self.site.name,
            "accuracy": self.accuracy(test, strategy),
            "accuracy_uni": self.accuracy(_fmri_only(test), strategy),
            "val_accuracy": self.accuracy(val, strategy),
            "val_accuracy_uni": self.accuracy(_fmri_only(val), strategy),
            "n_val": len(val),
        }
        return 1.0 - metrics["accuracy"], len(test), metrics

    # ---------------------------------------------------------------- internals
    def _save_private(self) -> None:
        """The site's own weights (and fMRI prototypes), written atomically to its state file."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        private = {k: v for k, v in state.items() if k not in self.keys}
        if self.own is not None:
            private |= {k: torch.from_numpy(a) for k, a in zip(OWN_KEYS, self.own, strict=True)}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        save_file(private, str(tmp))
        tmp.replace(self.state_file)

    def _load(self, parameters: list[np.ndarray], strategy: str) -> None:
        n = len(self.keys)
        state = OrderedDict(
            (k, torch.from_numpy(np.asarray(a)))
            for k, a in zip(self.keys, parameters[:n], strict=True)
        )
        self.model.load_state_dict(state, strict=False)
        if strategy == "pmcmfl" and len(parameters) > n:
            protos, counts = (np.array(a, dtype=np.float32) for a in parameters[n : n + 2])
            if self.own is not None:
                protos[OWN], counts[OWN] = self.own
            self.library = PrototypeLibrary(protos, counts)

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
                filled = _fill(reps, mask, strategy, protos, known, y)
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
        whose prototypes lie nearest the present representations."""
        self.model.eval()
        torch.manual_seed(self.seed)  # the same random fill for every evaluation
        fmri, image, text, labels, present = self._tensors(split)
        reps = self.model.encode(fmri, image, text)
        protos = torch.from_numpy(self.library.protos)
        known = torch.from_numpy(self.library.known())
        guess = _nearest_class(reps, present, protos, known) if strategy == "pmcmfl" else labels
        filled = _fill(reps, present, strategy, protos, known, guess)
        pred = self.model.head(self.model.fuse(filled)).argmax(1)
        return float((pred == labels).float().mean())


def _fmri_only(split: Split) -> Split:
    """``split`` with the image and caption features marked missing (uni-modal inference)."""
    return dataclasses.replace(split, present=np.eye(len(MODALITIES), dtype=bool)[[0] * len(split)])


def _fill(
    reps: torch.Tensor,
    mask: torch.Tensor,
    strategy: str,
    protos: torch.Tensor,
    known: torch.Tensor,
    cls: torch.Tensor,
) -> torch.Tensor:
    """Missing slots (``mask`` False) filled as ``strategy`` does (see the module docstring);
    ``cls`` picks the prototypes (PmcmFL's prototype mask: zero for a class nobody saw)."""
    if strategy == "pmcmfl":
        fill = protos[: len(MODALITIES), cls].transpose(0, 1)  # (n, 3, dim)
        fill = fill * known[: len(MODALITIES), cls].T[..., None]
        fill[:, OWN] = torch.randn_like(reps[:, OWN])  # see the module docstring
    elif strategy == "fedavg":
        fill = torch.randn_like(reps)
    else:
        fill = torch.zeros_like(reps)
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
