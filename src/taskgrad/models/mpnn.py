"""A compact message-passing network for molecules (torch only, no torch_geometric).

Graphs are batched by concatenation: atoms of all molecules are rows of one tensor, ``batch[a]``
is the molecule of atom a and ``ptr`` the offsets (molecule m owns rows ptr[m]:ptr[m+1]). Edges
join every ordered pair of distinct atoms of one molecule closer than ``cutoff`` Å; aggregation is
``index_add_`` over destination atoms, readout a gated sum over each molecule's atoms, so the
graph embedding is invariant to permuting atoms within a molecule (and to rigid motions: it only
sees distances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["GraphBatch", "MPNN", "gaussian_rbf", "node_features", "radius_edges"]

#: atomic numbers of the one-hot node features (QM9: H, C, N, O, F)
ATOM_TYPES = (1, 6, 7, 8, 9)


@dataclass
class GraphBatch:
    """Concatenated molecules: ``z`` (N,) atomic numbers, ``pos`` (N, 3) Å, ``ptr`` (B+1,)
    offsets.
    """

    z: Tensor
    pos: Tensor
    ptr: Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.ptr.numel() - 1)

    @property
    def batch(self) -> Tensor:
        """Molecule of each atom, (N,) long."""
        counts = self.ptr[1:] - self.ptr[:-1]
        return torch.repeat_interleave(torch.arange(self.num_graphs, device=self.z.device), counts)

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(self.z.to(device), self.pos.to(device), self.ptr.to(device))

    @staticmethod
    def from_molecules(mols: list[tuple[Tensor, Tensor]]) -> GraphBatch:
        """Concatenate molecules given as (z (n_i,), pos (n_i, 3)) pairs."""
        if not mols:
            raise ValueError("a GraphBatch needs at least one molecule.")
        counts = torch.tensor([int(z.numel()) for z, _ in mols])
        if (counts == 0).any():
            raise ValueError("every molecule needs at least one atom.")
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return GraphBatch(
            torch.cat([z.long() for z, _ in mols]), torch.cat([p.float() for _, p in mols]), ptr
        )


def radius_edges(pos: Tensor, ptr: Tensor, cutoff: float) -> tuple[Tensor, Tensor, Tensor]:
    """(src, dst, dist): every ordered pair i ≠ j of atoms of one molecule with ‖pos_i − pos_j‖ <
    cutoff.

    Pairs are enumerated on a padded (B, n_max, n_max) grid, so the cost is B·n_max² (n_max ≤ 29 in
    QM9).
    """
    counts = ptr[1:] - ptr[:-1]
    n_max = int(counts.max())
    ar = torch.arange(n_max, device=pos.device)
    valid = ar[None, :] < counts[:, None]  # (B, n_max)
    pair = valid[:, :, None] & valid[:, None, :] & (ar[:, None] != ar[None, :])[None]
    b, i, j = pair.nonzero(as_tuple=True)
    dst, src = ptr[b] + i, ptr[b] + j
    dist = (pos[dst] - pos[src]).norm(dim=-1)
    keep = dist < cutoff
    return src[keep], dst[keep], dist[keep]


def gaussian_rbf(dist: Tensor, cutoff: float, n: int) -> Tensor:
    """exp(−γ (d − μ_k)²) for n centres μ_k evenly on [0, cutoff], γ = 1 / spacing²; (E,) → (E,
    n).
    """
    mu = torch.linspace(0.0, cutoff, n, device=dist.device, dtype=dist.dtype)
    gamma = 1.0 / (mu[1] - mu[0]) ** 2
    return torch.exp(-gamma * (dist[:, None] - mu) ** 2)


def node_features(z: Tensor) -> Tensor:
    """One-hot element over (H, C, N, O, F) and the atomic number / 9: (N,) → (N, 6)."""
    types = torch.tensor(ATOM_TYPES, device=z.device)
    onehot = (z[:, None] == types).to(torch.float32)
    if not bool(onehot.any(-1).all()):
        bad = sorted(set(z[~onehot.any(-1)].tolist()))
        raise ValueError(f"atomic numbers {bad} are not among the node types {ATOM_TYPES}.")
    return torch.cat([onehot, z[:, None].float() / 9.0], -1)


class _Interaction(nn.Module):
    """m_i = Σ_{j: d_ij < c} W(rbf(d_ij)) ⊙ A h_j · ½(cos(π d_ij / c) + 1), then h_i ← GRU(m_i,
    h_i).
    """

    def __init__(self, hidden: int, n_rbf: int) -> None:
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(n_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.lin = nn.Linear(hidden, hidden, bias=False)
        self.gru = nn.GRUCell(hidden, hidden)

    def forward(self, h: Tensor, src: Tensor, dst: Tensor, rbf: Tensor, env: Tensor) -> Tensor:
        msg = self.filter(rbf) * env[:, None] * self.lin(h)[src]
        agg = torch.zeros_like(h).index_add_(0, dst, msg)
        return self.gru(agg, h)


class MPNN(nn.Module):
    """Shared encoder (embedding, ``n_layers`` interactions, gated-sum readout, MLP) giving a graph
    embedding z (B, hidden), and one linear head per task: ``forward(g) -> (z, [head_t(z)])``.
    """

    def __init__(
        self,
        n_tasks: int,
        hidden: int = 64,
        n_layers: int = 3,
        n_rbf: int = 32,
        cutoff: float = 5.0,
    ) -> None:
        super().__init__()
        if n_tasks < 1 or hidden < 1 or n_layers < 1 or n_rbf < 2 or not cutoff > 0:
            raise ValueError(
                f"need n_tasks, hidden, n_layers ≥ 1, n_rbf ≥ 2 and cutoff > 0; got "
                f"{n_tasks=}, {hidden=}, {n_layers=}, {n_rbf=}, {cutoff=}."
            )
        self.cutoff, self.n_rbf = float(cutoff), n_rbf
        self.embed = nn.Linear(len(ATOM_TYPES) + 1, hidden)
        self.layers = nn.ModuleList(_Interaction(hidden, n_rbf) for _ in range(n_layers))
        self.gate = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def encode(self, g: GraphBatch) -> Tensor:
        """Graph embedding (B, hidden): z = MLP(Σ_{i ∈ graph} σ(G h_i) ⊙ P h_i)."""
        src, dst, dist = radius_edges(g.pos, g.ptr, self.cutoff)
        rbf = gaussian_rbf(dist, self.cutoff, self.n_rbf)
        env = 0.5 * (torch.cos(dist * (math.pi / self.cutoff)) + 1.0)
        h = self.embed(node_features(g.z).to(g.pos.dtype))
        for layer in self.layers:
            h = layer(h, src, dst, rbf, env)
        atom = torch.sigmoid(self.gate(h)) * self.proj(h)
        pooled = torch.zeros(g.num_graphs, h.shape[1], device=h.device, dtype=h.dtype).index_add_(
            0, g.batch, atom
        )
        return self.out(pooled)

    def forward(self, g: GraphBatch) -> tuple[Tensor, list[Tensor]]:
        z = self.encode(g)
        return z, [head(z) for head in self.heads]
