"""Figures people would rather look at than read; matplotlib ``Figure`` objects saved as PNG.

No pyplot: figures are built with ``matplotlib.figure.Figure`` so that plotting changes no
global state and needs no display.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from simgen.store import Store

__all__ = ["plot_data", "plot_emulation"]


def plot_data(store: Store, path: str | os.PathLike, max_points: int = 5000) -> None:
    """A data set at a glance: the prior draws (first two parameters) and the simulations
    (first two components of x, coloured by the first parameter), as a PNG.

    Args:
        store: The data file.
        path: Where to write the PNG.
        max_points: Rows drawn (the first ones; rows are in random prior order already).
    """
    m = min(len(store), max_points)
    theta = store.theta[:m]
    x = store.x[:m].reshape(m, -1)
    names = store.parameters
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_t, ax_x = fig.subplots(1, 2)
    if theta.shape[1] >= 2:
        ax_t.scatter(theta[:, 0], theta[:, 1], s=2, alpha=0.5, c="tab:gray")
        ax_t.set(xlabel=names[0], ylabel=names[1])
    else:
        ax_t.hist(theta[:, 0], bins=50, color="tab:gray")
        ax_t.set(xlabel=names[0], ylabel="count")
    ax_t.set_title(f"theta ~ prior ({m:,} of {len(store):,} rows)")
    if x.shape[1] >= 2:
        points = ax_x.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, c=theta[:, 0], cmap="viridis")
        fig.colorbar(points, ax=ax_x, label=names[0])
        ax_x.set(xlabel="x[0]", ylabel="x[1]")
    else:
        ax_x.hist(x[:, 0], bins=50, color="tab:blue")
        ax_x.set(xlabel="x[0]", ylabel="count")
    ax_x.set_title(f"x ~ {store.metadata['simulator']}(theta)")
    fig.savefig(path, dpi=110)


def plot_emulation(
    simulated: np.ndarray,
    emulated: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Simulated and emulated x at one theta side by side: a scatter of the first two components
    (or histograms for 1-d x), as a PNG.

    Args:
        simulated: ``(n, *x_shape)`` from the simulator.
        emulated: ``(m, *x_shape)`` from the emulator.
        path: Where to write the PNG.
        title: Figure title (e.g. the theta).
    """
    a = np.asarray(simulated).reshape(len(simulated), -1)
    b = np.asarray(emulated).reshape(len(emulated), -1)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    if a.shape[1] >= 2:
        ax.scatter(a[:, 0], a[:, 1], s=3, alpha=0.4, label="simulator", c="tab:gray")
        ax.scatter(b[:, 0], b[:, 1], s=3, alpha=0.4, label="emulator", c="tab:orange")
        ax.set(xlabel="x[0]", ylabel="x[1]")
    else:
        bins = np.histogram_bin_edges(np.concatenate([a[:, 0], b[:, 0]]), bins=60)
        ax.hist(a[:, 0], bins=bins, alpha=0.5, density=True, label="simulator", color="tab:gray")
        ax.hist(b[:, 0], bins=bins, alpha=0.5, density=True, label="emulator", color="tab:orange")
        ax.set(xlabel="x[0]", ylabel="density")
    ax.legend(markerscale=4)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
