"""Plain and whitened SVD of a layer's weight, computed once at full rank and truncated on demand."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .calibration import InputCovariance

__all__ = ["Factors", "factorize"]

# singular values below this fraction of the largest: their down rows are zeroed, not divided by ~0
_RELATIVE_TOLERANCE = 1e-10


@dataclass
class Factors:
    """``W ~ up @ down`` at every rank r <= k, in float64: ``up`` = U S (m, k), ``down`` (k, n) = V^T, or
    V^T S_x^-1 whitened. ``energy``: the squared singular values, descending (of W S_x for the covariance
    normalised to a unit mean diagonal, ``scale`` that normalisation)."""

    up: torch.Tensor
    down: torch.Tensor
    energy: torch.Tensor
    whitened: bool
    scale: float = 1.0

    @property
    def output_energy(self) -> torch.Tensor:
        """``energy * scale``: whitened, entry i is the mean squared output error of dropping direction i
        (SVD-LLM's truncation loss), comparable across layers; plain, sigma_i^2 of W."""
        return self.energy * self.scale

    @property
    def max_rank(self) -> int:
        return self.energy.numel()

    def truncated(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(down[:r], up[:, :r])``: the optimal rank-r factors (in the whitened norm if whitened)."""
        return self.down[:rank], self.up[:, :rank]


def factorize(w: torch.Tensor, cov: InputCovariance | None = None, damping: float = 1e-4) -> Factors:
    """SVD of ``w`` (m, n), whitened by the input covariance ``cov`` when given.

    Whitening: with ``S S^T = C = XX^T/N / mean(diag XX^T/N) + damping * I``, ``W S = U Σ V^T`` and
    ``down = V^T S^-1 = Σ^-1 U^T W``, so ``up[:, :r] @ down[:r] = U_r U_r^T W``: the rank-r map that
    minimises ``||(W - W_r) X||``, and exactly ``W`` at full rank. The second form never inverts S.
    """
    w64 = w.detach().to(torch.float64)
    if cov is None:
        u, s, vh = _svd(w64)
        return Factors(up=u * s, down=vh, energy=s.square(), whitened=False)
    c = cov.mean().to(w64.device)
    scale = (c if cov.diagonal else c.diagonal()).mean()
    if not scale > 0:  # the layer only ever saw zero inputs: nothing to weight by, plain SVD
        return factorize(w, None)
    # normalised, down = Σ^-1 U^T W stays well scaled whatever the inputs' magnitude; the scalar is kept
    c = c / scale
    if cov.diagonal:
        c = c + damping
    else:
        c.diagonal().add_(damping)
    u, s = _whitened_left_singular(w64, c)
    keep = s > _RELATIVE_TOLERANCE * s.max().clamp_min(torch.finfo(torch.float64).tiny)
    down = torch.where(keep[:, None], (u.T @ w64) / torch.where(keep, s, 1.0)[:, None], 0.0)
    return Factors(up=u * s, down=down, energy=s.square(), whitened=True, scale=float(scale))


def _whitened_left_singular(w: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and values of ``W S`` for any square root ``S`` of the covariance ``c``."""
    if c.dim() == 1:  # diagonal covariance (embeddings: token frequencies)
        return _svd(w * c.sqrt())[:2]
    m, n = w.shape
    if n > m:  # wide: eigen-decompose the small Gram W C W^T (m x m) instead of factorising C (n x n)
        vals, vecs = torch.linalg.eigh(w @ c @ w.T)
        return vecs.flip(1), vals.flip(0).clamp_min(0).sqrt()
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:  # not positive definite in floating point: clamped symmetric square root
        vals, vecs = torch.linalg.eigh(c)
        chol = vecs * vals.clamp_min(vals.max() * 1e-12).sqrt()
    return torch.linalg.svd(w @ chol, full_matrices=False)[:2]


def _svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Economy SVD; a wide matrix is decomposed as its tall transpose, which LAPACK does several times faster."""
    if w.shape[1] > w.shape[0]:
        v, s, uh = torch.linalg.svd(w.T, full_matrices=False)
        return uh.T, s, v.T
    return torch.linalg.svd(w, full_matrices=False)
