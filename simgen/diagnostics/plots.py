"""Figures people would rather look at than read; matplotlib ``Figure`` objects saved as PNG.

No pyplot: figures are built with ``matplotlib.figure.Figure`` so that plotting changes no
global state and needs no display.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from simgen.data.store import Store

__all__ = [
    "plot_calibration",
    "plot_corner",
    "plot_data",
    "plot_emulation",
    "plot_field_posterior",
    "plot_fields",
    "plot_latent_grid",
    "plot_summaries",
]


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


def plot_corner(
    samples: np.ndarray,
    names: tuple[str, ...] | list[str],
    path: str | os.PathLike,
    reference: np.ndarray | None = None,
    bins: int = 40,
    truth: np.ndarray | None = None,
) -> None:
    """Corner plot of posterior samples ``(n, d)``: histograms on the diagonal, 2-D
    histograms below it; ``reference`` samples (e.g. a true posterior) drawn as contours,
    ``truth`` ``(d,)`` (the parameters that made the data) as red lines.

    Args:
        samples: ``(n, d)`` draws.
        names: Parameter names.
        path: Where to write the PNG.
        reference: Optional ``(m, d)`` draws to compare with.
        bins: Histogram bins per axis.
        truth: Optional ``(d,)`` true parameters.
    """
    samples = np.asarray(samples)
    d = samples.shape[1]
    fig = Figure(figsize=(2.2 * d + 1, 2.2 * d + 1), layout="constrained")
    axes = np.atleast_2d(fig.subplots(d, d, squeeze=False))
    stacked = samples if reference is None else np.concatenate([samples, reference])
    lows, highs = np.quantile(stacked, 0.001, axis=0), np.quantile(stacked, 0.999, axis=0)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                edges = np.linspace(lows[i], highs[i], bins + 1)
                ax.hist(samples[:, i], bins=edges, density=True, color="tab:blue", alpha=0.7)
                if reference is not None:
                    ax.hist(
                        reference[:, i], bins=edges, density=True, histtype="step", color="black"
                    )
                ax.set_yticks([])
            else:
                ranges = [[lows[j], highs[j]], [lows[i], highs[i]]]
                ax.hist2d(samples[:, j], samples[:, i], bins=bins, range=ranges, cmap="Blues")
                if reference is not None:
                    h, xe, ye = np.histogram2d(
                        reference[:, j], reference[:, i], bins=20, range=ranges
                    )
                    ax.contour(
                        (xe[1:] + xe[:-1]) / 2,
                        (ye[1:] + ye[:-1]) / 2,
                        h.T,
                        levels=4,
                        colors="black",
                        linewidths=0.7,
                    )
            if truth is not None:
                ax.axvline(truth[j], color="tab:red", linewidth=0.8)
                if i != j:
                    ax.axhline(truth[i], color="tab:red", linewidth=0.8)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    fig.savefig(path, dpi=100)


def plot_calibration(
    ranks: np.ndarray,
    draws: int,
    curve: dict[str, np.ndarray],
    names: tuple[str, ...] | list[str],
    path: str | os.PathLike,
    bins: int = 10,
) -> None:
    """SBC rank histograms (one per parameter, with the 99% band of uniform counts) and the
    expected-coverage curve (with the band of a calibrated estimator), as a PNG.

    Args:
        ranks: ``(m, d)`` ranks in ``{0, ..., draws}``.
        draws: Posterior draws per pair.
        curve: From :func:`simgen.diagnostics.metrics.coverage_levels`.
        names: Parameter names.
        path: Where to write the PNG.
        bins: Histogram bins.
    """
    from scipy import stats

    m, d = ranks.shape
    cols = min(d, 4) + 1
    rows = -(-d // (cols - 1))
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    edges = np.linspace(0, draws + 1, bins + 1)
    low, high = stats.binom.ppf([0.005, 0.995], m, 1 / bins)
    for j in range(rows * (cols - 1)):
        ax = axes[j // (cols - 1), j % (cols - 1)]
        if j >= d:
            ax.set_axis_off()
            continue
        ax.axhspan(low, high, color="tab:gray", alpha=0.3, lw=0)
        ax.hist(ranks[:, j], bins=edges, color="tab:blue", alpha=0.8)
        ax.set(title=f"SBC ranks: {names[j]}", xlabel="rank", yticks=[])
    ax = axes[0, -1]
    ax.fill_between(curve["levels"], curve["low"], curve["high"], color="tab:gray", alpha=0.3)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8)
    ax.plot(curve["levels"], curve["coverage"], color="tab:orange")
    ax.set(title="expected coverage", xlabel="credibility level", ylabel="coverage")
    for r in range(1, rows):
        axes[r, -1].set_axis_off()
    fig.savefig(path, dpi=100)


def plot_fields(
    simulated: np.ndarray,
    emulated: np.ndarray,
    k: np.ndarray,
    p_sim: np.ndarray,
    p_emu: np.ndarray,
    path: str | os.PathLike,
    show: int = 3,
) -> None:
    """Simulated and emulated maps side by side (top rows), the power spectra with the
    simulated maps' 1-sigma band of the mean, their ratio, and the pixel PDFs, as a PNG.

    Args:
        simulated: ``(n, N, N)`` maps from the simulator.
        emulated: ``(m, N, N)`` maps from the emulator.
        k: ``(bins,)`` wave numbers.
        p_sim: ``(n, bins)`` power spectra of the simulated maps.
        p_emu: ``(m, bins)`` power spectra of the emulated maps.
        path: Where to write the PNG.
        show: Maps shown per side.
    """
    fig = Figure(figsize=(3 * show, 9.5), layout="constrained")
    grid = fig.add_gridspec(3, show)
    lo, hi = np.quantile(simulated[:show], [0.01, 0.99])
    for row, (maps, label) in enumerate(((simulated, "simulated"), (emulated, "emulated"))):
        for i in range(show):
            ax = fig.add_subplot(grid[row, i])
            ax.imshow(maps[i], vmin=lo, vmax=hi, cmap="magma")
            ax.set(xticks=[], yticks=[], title=f"{label} {i + 1}")
    mean, err = p_sim.mean(0), p_sim.std(0) / np.sqrt(len(p_sim))
    ax = fig.add_subplot(grid[2, 0])
    ax.fill_between(k, mean - err, mean + err, color="tab:gray", alpha=0.4)
    ax.loglog(k, mean, color="black", label="simulator")
    ax.loglog(k, p_emu.mean(0), color="tab:orange", label="emulator")
    ax.set(xlabel="k", ylabel="P(k)", title="power spectrum")
    ax.legend()
    ax = fig.add_subplot(grid[2, 1])
    ax.axhspan(0.95, 1.05, color="tab:gray", alpha=0.3, lw=0)
    ax.fill_between(k, 1 - err / mean, 1 + err / mean, color="tab:gray", alpha=0.4)
    ax.semilogx(k, p_emu.mean(0) / mean, color="tab:orange")
    ax.set(xlabel="k", ylabel="emulator / simulator", title="spectrum ratio (band: 5%)")
    for axis in (fig.axes[-2].xaxis, ax.xaxis):  # the log axes: no crowded minor labels
        axis.set_minor_formatter(NullFormatter())
    if show > 2:
        ax = fig.add_subplot(grid[2, 2])
        edges = np.linspace(*np.quantile(simulated, [0.001, 0.999]), 60)
        ax.hist(simulated.ravel(), bins=edges, density=True, histtype="step", color="black")
        ax.hist(emulated.ravel(), bins=edges, density=True, histtype="step", color="tab:orange")
        ax.set(xlabel="pixel value", yscale="log", title="pixel PDF")
    fig.savefig(path, dpi=100)


def plot_field_posterior(
    observed: np.ndarray,
    seen: np.ndarray,
    draws: np.ndarray,
    path: str | os.PathLike,
    exact: tuple[np.ndarray, np.ndarray] | None = None,
    show: int = 3,
    truth: np.ndarray | None = None,
) -> None:
    """A map's posterior given a measurement as a PNG: the observation (unseen pixels blank),
    the posterior mean and standard deviation, ``show`` draws, and, given ``exact`` (mean, std),
    the exact ones beside them; given ``truth``, the map that was measured.

    Args:
        observed: ``(N, N)`` the observation.
        seen: ``(N, N)`` bool, the pixels seen.
        draws: ``(n, N, N)`` posterior draws.
        path: Where to write the PNG.
        exact: The exact posterior mean and standard deviation, ``(N, N)`` each.
        show: Draws shown.
        truth: ``(N, N)`` the true map.
    """
    mean, std = draws.mean(0), draws.std(0)
    panels = [("observed", np.where(seen, observed, np.nan), "magma"),
              ("posterior mean", mean, "magma"), ("posterior std", std, "viridis")]  # fmt: skip
    if exact is not None:
        panels += [("exact mean", exact[0], "magma"), ("exact std", exact[1], "viridis")]
    if truth is not None:
        panels.append(("true map", truth, "magma"))
    panels += [(f"draw {i + 1}", draws[i], "magma") for i in range(min(show, len(draws)))]
    cols = 3 if exact is None else 5
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), layout="constrained")
    lo, hi = np.nanquantile(np.concatenate([mean.ravel(), draws[:show].ravel()]), [0.01, 0.99])
    s_hi = max(float(std.max()), 0.0 if exact is None else float(exact[1].max()))
    for i, (title, image, cmap) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        limits = (0, s_hi) if cmap == "viridis" else (lo, hi)
        shown = ax.imshow(image, vmin=limits[0], vmax=limits[1], cmap=cmap)
        ax.set(xticks=[], yticks=[], title=title)
        if i in (0, 2):
            fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)


def plot_summaries(
    simulated: dict[str, np.ndarray],
    emulated: dict[str, dict[str, np.ndarray]],
    path: str | os.PathLike,
) -> None:
    """Histograms of each summary statistic, simulated (grey) against one or more emulators
    (``emulated``: label -> statistics), as a PNG. The bins span the simulated values; the
    share of an emulator's values beyond them is given in its label."""
    names = list(simulated)
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:red"]
    fig = Figure(figsize=(3.6 * len(names), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        lo, hi = np.quantile(simulated[name], [0.005, 0.995])
        edges = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 31)
        ax.hist(
            simulated[name],
            bins=edges,
            density=True,
            alpha=0.5,
            color="tab:gray",
            label="simulator",
        )
        for (label, stats), color in zip(emulated.items(), colors, strict=False):
            values = stats[name]
            beyond = np.mean((values < edges[0]) | (values > edges[-1]))
            shown = f"{label} ({beyond:.1%} beyond)" if beyond else label
            ax.hist(values, bins=edges, density=True, histtype="step", color=color, label=shown)
        ax.set(title=name, yticks=[])
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def plot_latent_grid(
    decoded: np.ndarray, z1: np.ndarray, z2: np.ndarray, path: str | os.PathLike, title: str
) -> None:
    """The decoder's mean over a grid of a 2-D latent space (as in Kingma & Welling 2013,
    figure 4), as a PNG: maps as images, vectors as profiles (value against feature index).

    Args:
        decoded: ``(g, g, *x_shape)``: the decoded mean at ``(z1[i], z2[j])``.
        z1: ``(g,)`` first latent coordinate of each row of the grid.
        z2: ``(g,)`` second latent coordinate of each column.
        path: Where to write the PNG.
        title: The figure's title (e.g. the theta it is conditioned on).
    """
    g = len(z1)
    fig = Figure(figsize=(1.4 * g, 1.4 * g), layout="constrained")
    axes = fig.subplots(g, g, sharex=True, sharey=True)
    lo, hi = np.quantile(decoded, [0.01, 0.99])
    for i in range(g):
        for j in range(g):
            ax, x = axes[i, j], decoded[i, j]
            if x.ndim == 2:
                ax.imshow(x, vmin=lo, vmax=hi, cmap="magma")
            else:
                ax.plot(x.ravel(), color="tab:blue", lw=1)
                ax.set_ylim(lo, hi)
            ax.set(xticks=[], yticks=[])
            if j == 0:
                ax.set_ylabel(f"{z1[i]:.2g}", fontsize=7)
            if i == g - 1:
                ax.set_xlabel(f"{z2[j]:.2g}", fontsize=7)
    fig.suptitle(f"{title}; rows: z1, columns: z2")
    fig.savefig(path, dpi=90)
