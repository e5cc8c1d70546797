r"""A bead-spring polymer in 3-D at equilibrium: configurations :math:`\sim e^{-U / T}`.

Parameters: temperature :math:`T \sim U(0.5, 1.5)` and Lennard-Jones strength
:math:`\epsilon \sim U(0.2, 1.0)` (reduced units, bead diameter 1). For ``beads`` beads at
:math:`r_i`, bond vectors :math:`b_i = r_{i+1} - r_i`:

.. math::
    U = \sum_i \tfrac{k_b}{2} (|b_i| - 1)^2
      + \sum_i k_a \left(1 - \frac{b_i \cdot b_{i+1}}{|b_i| |b_{i+1}|}\right)
      + \sum_{|i - j| \ge 3} 4 \epsilon \left(r_{ij}^{-12} - r_{ij}^{-6}\right).

Sampling: the Metropolis-adjusted Langevin algorithm (MALA; Roberts & Tweedie 1996), each step
followed by a pivot move (:func:`pivot_move`: the chain beyond a random bead turns about it,
accepted by Metropolis; Lal 1969, Madras & Sokal 1988), one independent chain per row,
vectorised over rows, started from a straight chain with a random kink and run for ``steps``
steps (burn-in; the chain's last state is the sample, so rows are independent draws and need no
decorrelation). The MALA step size is ``step * T / k_b``, which keeps the stiff bonds stable and
the acceptance near 0.6 at every temperature; the pivot angles are normal with standard
deviation ``pivot`` radians (0: MALA alone). MALA alone needs about 30,000 steps to fold the
straight start into the compact chain of low temperatures (T = 0.5, epsilon = 1: radius of
gyration 1.90 after 3,000 steps, 1.38 after 30,000, 1.35 after 90,000); with pivot moves 1,000
steps reach it (1.356).

Output (``coordinates``), invariant to translation and rotation, ``3 * beads - 6`` values:

* ``"cartesian"`` (default): the configuration in its standard orientation, bead 0 at the
  origin, bead 1 on the +x axis, bead 2 in the xy-plane with y > 0; the coordinates that are not
  fixed by that frame (bead 1's x, bead 2's x and y, then x, y, z of beads 3, ...);
  :func:`positions` rebuilds the ``(beads, 3)`` positions.
* ``"internal"``: the chain's internal coordinates, the representation of molecular generative
  models (Noe et al. 2019): the ``beads - 1`` bond lengths :math:`|b_i|`, the ``beads - 2``
  bending angles :math:`\beta_i = \arccos(\hat b_i \cdot \hat b_{i+1})` and the ``beads - 3``
  dihedral angles :math:`\phi_i` of bonds ``i, i+1, i+2``; :func:`from_internal` rebuilds the
  standard-orientation positions (natural extension reference frame, NeRF). Each stiff bond
  is then one coordinate for an emulator to model, instead of a constraint between Cartesian
  coordinates.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

import simgen
from simgen.data.simulator import box_uniform
from simgen.diagnostics.metrics import bond_lengths, radius_of_gyration

__all__ = [
    "BeadSpringChain",
    "energy",
    "energy_and_grad",
    "from_internal",
    "internal_coordinates",
    "jacobian_log_det",
    "pivot_move",
    "positions",
    "standard_frame",
]


def _pairs(beads: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(beads, k=3)
    return i, j


def energy_and_grad(
    r: np.ndarray, epsilon: np.ndarray, bond_k: float, angle_k: float
) -> tuple[np.ndarray, np.ndarray]:
    """:math:`U` ``(n,)`` and :math:`\\nabla U` ``(n, beads, 3)`` of positions ``(n, beads, 3)``."""
    grad = np.zeros_like(r)
    b = np.diff(r, axis=1)  # (n, beads - 1, 3)
    length = np.linalg.norm(b, axis=-1)
    u = 0.5 * bond_k * ((length - 1) ** 2).sum(-1)
    g_b = (bond_k * (length - 1) / length)[..., None] * b  # dU/db
    unit = b / length[..., None]
    cos = (unit[:, :-1] * unit[:, 1:]).sum(-1)
    u += angle_k * (1 - cos).sum(-1)
    # d cos / d b_i = (u_{i+1} - cos u_i) / |b_i|, and symmetrically for b_{i+1}
    g_b[:, :-1] -= angle_k * (unit[:, 1:] - cos[..., None] * unit[:, :-1]) / length[:, :-1, None]
    g_b[:, 1:] -= angle_k * (unit[:, :-1] - cos[..., None] * unit[:, 1:]) / length[:, 1:, None]
    grad[:, 1:] += g_b
    grad[:, :-1] -= g_b
    i, j = _pairs(r.shape[1])
    if len(i):
        d = r[:, i] - r[:, j]  # (n, pairs, 3)
        r2 = (d**2).sum(-1)
        inv6 = r2**-3
        eps = epsilon[:, None]
        u += (4 * eps * (inv6**2 - inv6)).sum(-1)
        g = (4 * eps * (-12 * inv6**2 + 6 * inv6) / r2)[..., None] * d  # dU/dd
        np.add.at(grad, (slice(None), i), g)
        np.add.at(grad, (slice(None), j), -g)
    return u, grad


def standard_frame(r: np.ndarray) -> np.ndarray:
    """Rotate and translate ``(n, beads, 3)`` positions into the standard orientation."""
    r = r - r[:, :1]
    e1 = r[:, 1] / np.linalg.norm(r[:, 1], axis=-1, keepdims=True)
    v = r[:, 2] - (r[:, 2] * e1).sum(-1, keepdims=True) * e1
    e2 = v / np.linalg.norm(v, axis=-1, keepdims=True)
    e3 = np.cross(e1, e2)
    rotation = np.stack([e1, e2, e3], axis=1)  # rows: the new axes
    return np.einsum("nab,nkb->nka", rotation, r)


def positions(x: np.ndarray) -> np.ndarray:
    """``(n, 3 * beads - 6)`` standard-orientation coordinates -> ``(n, beads, 3)`` positions."""
    x = np.asarray(x, np.float64)
    n, beads = len(x), (x.shape[1] + 6) // 3
    r = np.zeros((n, beads, 3))
    r[:, 1, 0] = x[:, 0]
    r[:, 2, :2] = x[:, 1:3]
    r[:, 3:] = x[:, 3:].reshape(n, beads - 3, 3)
    return r


def _frame(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    r"""The NeRF frame at bead ``c`` of beads ``a, b, c`` ``(n, 3)``: the unit bond
    :math:`e = (c - b) / |c - b|`, the normal :math:`n` of the plane ``a, b, c`` and
    :math:`m = n \times e`."""
    e = (c - b) / np.linalg.norm(c - b, axis=-1, keepdims=True)
    normal = np.cross(b - a, e)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return e, normal, np.cross(normal, e)


def internal_coordinates(r: np.ndarray) -> np.ndarray:
    """Positions ``(n, beads, 3)`` -> ``(n, 3 * beads - 6)``: bond lengths, bending angles,
    dihedral angles (module docstring); inverse of :func:`from_internal`."""
    r = np.asarray(r, np.float64)
    bonds = np.diff(r, axis=1)
    length = np.linalg.norm(bonds, axis=-1)
    unit = bonds / length[..., None]
    bend = np.arccos(np.clip((unit[:, :-1] * unit[:, 1:]).sum(-1), -1.0, 1.0))
    dihedral = []
    for i in range(3, r.shape[1]):
        _, normal, m = _frame(r[:, i - 3], r[:, i - 2], r[:, i - 1])
        v = r[:, i] - r[:, i - 1]
        dihedral.append(np.arctan2((v * normal).sum(-1), (v * m).sum(-1)))
    return np.concatenate([length, bend, np.stack(dihedral, axis=1)], axis=1)


def from_internal(q: np.ndarray) -> np.ndarray:
    """``(n, 3 * beads - 6)`` internal coordinates -> ``(n, beads, 3)`` positions in the
    standard orientation (any real angles are valid: they enter through cos and sin)."""
    q = np.asarray(q, np.float64)
    n, beads = len(q), (q.shape[1] + 6) // 3
    length, bend = q[:, : beads - 1], q[:, beads - 1 : 2 * beads - 3]
    dihedral = q[:, 2 * beads - 3 :]
    r = np.zeros((n, beads, 3))
    r[:, 1, 0] = length[:, 0]
    r[:, 2, 0] = length[:, 0] + length[:, 1] * np.cos(bend[:, 0])
    r[:, 2, 1] = length[:, 1] * np.sin(bend[:, 0])
    for i in range(3, beads):
        e, normal, m = _frame(r[:, i - 3], r[:, i - 2], r[:, i - 1])
        beta, phi = bend[:, i - 2, None], dihedral[:, i - 3, None]
        along = np.cos(beta) * e + np.sin(beta) * (np.cos(phi) * m + np.sin(phi) * normal)
        r[:, i] = r[:, i - 1] + length[:, i - 1, None] * along
    return r


def jacobian_log_det(x: np.ndarray, coordinates: str) -> np.ndarray:
    r""":math:`\log J(x)` ``(n,)`` of coordinates ``(n, 3 * beads - 6)``: the volume element
    of the Cartesian positions is :math:`d^3 r_0 \, dR \, J(x) \, dx` (translation, rotation
    by the Haar measure, x), with

    * ``"internal"``: :math:`J = \prod_i l_i^2 \prod_i \sin \beta_i` (spherical coordinates of
      each bond about the one before), on :math:`l_i > 0`, :math:`0 < \beta_i < \pi`,
      :math:`-\pi < \phi_i \le \pi`;
    * ``"cartesian"``: :math:`J = x_1^2 \, y_2` (bead 1 at distance :math:`x_1` on the x axis,
      bead 2 at distance :math:`y_2` from it), on :math:`x_1 > 0`, :math:`y_2 > 0`.

    ``-inf`` outside the support.
    """
    x = np.asarray(x, np.float64)
    beads = (x.shape[1] + 6) // 3
    if coordinates == "cartesian":
        inside = (x[:, 0] > 0) & (x[:, 2] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(inside, 2 * np.log(x[:, 0]) + np.log(x[:, 2]), -np.inf)
    length, bend = x[:, : beads - 1], x[:, beads - 1 : 2 * beads - 3]
    dihedral = x[:, 2 * beads - 3 :]
    inside = (
        (length > 0).all(1)
        & ((bend > 0) & (bend < np.pi)).all(1)
        & ((dihedral > -np.pi) & (dihedral <= np.pi)).all(1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        log_j = 2 * np.log(length).sum(1) + np.log(np.sin(bend)).sum(1)
    return np.where(inside, log_j, -np.inf)


def pivot_move(r: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    r"""A pivot proposal for each chain of ``r`` ``(n, beads, 3)``: the beads after a random
    inner bead :math:`k` turn about it, by an angle :math:`\alpha \sim N(0, \text{scale}^2)`
    about a uniformly random axis.

    Its inverse is the same move with :math:`-\alpha`, which is as likely, and a rotation
    about a bead that does not move keeps volume, so the Metropolis ratio is
    :math:`e^{-\Delta U / T}` alone. It changes the chain's shape at once, which
    MALA's small steps (bounded by the stiff bonds) take tens of thousands of steps to do.
    """
    n, beads, _ = r.shape
    k = rng.integers(1, beads - 1, size=n)
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    alpha = scale * rng.standard_normal(n)
    rotation = Rotation.from_rotvec(axis * alpha[:, None]).as_matrix()
    centre = r[np.arange(n), k][:, None, :]
    turned = centre + np.einsum("nab,nkb->nka", rotation, r - centre)
    tail = np.arange(beads)[None, :, None] > k[:, None, None]
    return np.where(tail, turned, r)


def _take(
    accept: np.ndarray, new: tuple[np.ndarray, ...], old: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, ...]:
    """Per row, the ``new`` arrays where ``accept (n,)``, else the ``old`` ones."""
    return tuple(
        np.where(accept.reshape(-1, *[1] * (a.ndim - 1)), a, b)
        for a, b in zip(new, old, strict=True)
    )


def energy(x: np.ndarray, epsilon: np.ndarray, bond_k: float, angle_k: float) -> np.ndarray:
    """Potential energy ``(n,)`` of standard-orientation coordinates ``(n, 3 * beads - 6)``."""
    return energy_and_grad(positions(x), np.asarray(epsilon, np.float64), bond_k, angle_k)[0]


class BeadSpringChain(simgen.Simulator):
    """Equilibrium configurations of a bead-spring chain with Lennard-Jones attraction."""

    name = "molecular"
    parameters = ("temperature", "epsilon")
    chunk_size = 500

    def __init__(
        self,
        beads: int = 8,
        bond_k: float = 100.0,
        angle_k: float = 2.0,
        steps: int = 3000,
        step: float = 0.5,
        coordinates: str = "cartesian",
        pivot: float = 1.0,
    ) -> None:
        if beads < 4:
            raise simgen.UsageError(f"molecular: beads must be >= 4, got {beads}")
        if bond_k <= 0 or angle_k < 0 or steps < 1 or step <= 0 or pivot < 0:
            raise simgen.UsageError("molecular: bond_k, step > 0, angle_k, pivot >= 0, steps >= 1")
        if coordinates not in ("cartesian", "internal"):
            raise simgen.UsageError(
                f"molecular: coordinates must be 'cartesian' or 'internal', got '{coordinates}'"
            )
        self.coordinates = coordinates
        self.beads, self.bond_k, self.angle_k = beads, bond_k, angle_k
        self.steps, self.step, self.pivot = steps, step, pivot
        self.x_shape = (3 * beads - 6,)

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([0.5, 0.2], [1.5, 1.0])

    def sample_positions(
        self, theta: np.ndarray, rng: np.random.Generator, steps: int | None = None
    ) -> tuple[np.ndarray, float]:
        """MALA, each step followed by a pivot move (``pivot``), from a kinked straight chain:
        positions ``(n, beads, 3)`` after ``steps`` steps, and the mean MALA acceptance rate."""
        theta = np.asarray(theta, np.float64)
        n = len(theta)
        temperature, epsilon = theta[:, 0], theta[:, 1]
        r = np.zeros((n, self.beads, 3))
        r[:, :, 0] = np.arange(self.beads)
        r[:, 2:, 1] += 0.1 * rng.standard_normal((n, 1))  # a kink breaks the line's symmetry
        h = (self.step * temperature / self.bond_k)[:, None, None]
        t = temperature[:, None, None]
        u, g = energy_and_grad(r, epsilon, self.bond_k, self.angle_k)
        accepted = 0.0
        for _ in range(steps or self.steps):
            mean = r - 0.5 * h * g / t
            proposal = mean + np.sqrt(h) * rng.standard_normal(r.shape)
            u_new, g_new = energy_and_grad(proposal, epsilon, self.bond_k, self.angle_k)
            back = proposal - 0.5 * h * g_new / t
            log_q_fwd = -((proposal - mean) ** 2).sum((1, 2)) / (2 * h[:, 0, 0])
            log_q_back = -((r - back) ** 2).sum((1, 2)) / (2 * h[:, 0, 0])
            log_alpha = -(u_new - u) / temperature + log_q_back - log_q_fwd
            accept = np.log(rng.random(n)) < np.nan_to_num(log_alpha, nan=-np.inf)
            r, u, g = _take(accept, (proposal, u_new, g_new), (r, u, g))
            accepted += accept.mean()
            if self.pivot:
                proposal = pivot_move(r, rng, self.pivot)
                u_new, g_new = energy_and_grad(proposal, epsilon, self.bond_k, self.angle_k)
                log_alpha = -(u_new - u) / temperature
                accept = np.log(rng.random(n)) < np.nan_to_num(log_alpha, nan=-np.inf)
                r, u, g = _take(accept, (proposal, u_new, g_new), (r, u, g))
        return r, accepted / (steps or self.steps)

    def summaries(self, x: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Per-configuration statistics ``simgen check`` compares: potential energy, radius of
        gyration, mean bond length; ``x`` ``(n, 3 * beads - 6)``, ``theta`` ``(n, 2)``."""
        r = self.positions(x)
        eps = np.broadcast_to(np.asarray(theta, np.float64)[..., 1], (len(r),))
        return {
            "energy": energy_and_grad(r, eps, self.bond_k, self.angle_k)[0],
            "radius_of_gyration": radius_of_gyration(r),
            "bond_length": bond_lengths(r).mean(1),
        }

    def log_unnormalized(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""The Boltzmann density of this simulator's output, up to a constant in x:
        :math:`-U / T + \log J`, ``x`` ``(n, 3 * beads - 6)``, ``theta`` ``(n, 2)`` -> ``(n,)``.

        :math:`J` is the volume of the Cartesian positions per unit of x, the six rigid-body
        degrees of freedom integrated out (they are uniform: translations, and rotations by
        the Haar measure): :func:`jacobian_log_det`. Outside the support of x (a negative
        length, an angle outside its range): ``-inf``.
        """
        x, theta = np.asarray(x, np.float64), np.asarray(theta, np.float64)
        r = self.positions(x)
        with np.errstate(all="ignore"):  # overlapping beads: an infinite energy, density 0
            u = energy_and_grad(r, theta[:, 1].copy(), self.bond_k, self.angle_k)[0]
        log_j = jacobian_log_det(x, self.coordinates)
        return np.where(np.isfinite(log_j), -u / theta[:, 0] + log_j, -np.inf)

    def positions(self, x: np.ndarray) -> np.ndarray:
        """This simulator's output ``(n, 3 * beads - 6)`` -> positions ``(n, beads, 3)``."""
        return from_internal(x) if self.coordinates == "internal" else positions(x)

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r, _ = self.sample_positions(theta, rng)
        frame = standard_frame(r)
        if self.coordinates == "internal":
            return internal_coordinates(frame)
        return np.concatenate(
            [frame[:, 1, :1], frame[:, 2, :2], frame[:, 3:].reshape(len(r), -1)], axis=1
        )
