"""The model families by name: build one from its plain configuration, and the settings
that suit a kind of x."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from simgen.errors import UsageError
from simgen.models.family import Family

__all__ = [
    "AUTOREGRESSIVE_MAX",
    "CORRELATED_MAX",
    "FAMILIES",
    "FIXED_GAUSSIAN_MAX",
    "STANDARDIZATION_GAIN",
    "STANDARDIZATION_HIDDEN",
    "STANDARDIZATION_STEPS",
    "VECTOR_TRANSFORMS",
    "VP_SETTINGS",
    "build_family",
    "defaults_for",
]

AUTOREGRESSIVE_MAX = 64  # flows over more features default to coupling transforms
# Spline transforms of a flow over a vector, after its standardisation given theta. Measured at
# 1e4 simulations (validation loss, 5 against 2): slcp -2.217 / -2.287, gaussian_linear 10.761
# / 10.753, gaussian_mixture -2.500 / -2.494, two_moons -2.701 / -2.683; posterior C2ST
# .565 / .548, .526 / .520, .526 / .524, .513 / .514. More transforms overfit where the
# standardisation already explains most of x (slcp's held-out KL: 0.29 nats with 5, 0.22 with
# 2), and each adds to every density evaluation (slcp, 20,000 rows: 0.26 s with 5, 0.13 s
# with 2)
VECTOR_TRANSFORMS = 2
CORRELATED_MAX = 32  # flows over at most this many features decorrelate them given theta
# flows over at most this many features decide fixed_gaussian from the data ("auto"): the
# heteroscedastic fit that decides takes 0.5 s on 8,192 rows of 100 values, 9-10 s at 1,024
# and 21 s at 2,048 (2 CPU cores)
FIXED_GAUSSIAN_MAX = 1024
# EDM diffusion MLPs over at most this many features have three hidden layers, whose exact
# divergence costs one forward pass per feature; above, two, whose divergence costs one
# matrix-vector product at any size (MLP.forward_and_trace). At 1e5 simulations: two_moons'
# density error 0.14 nats with three, 0.22-0.23 with two (256 or 512 wide); slcp's 0.29 with
# either, its log densities 10x faster with two
DEEP_DENOISER_MAX = 2
# EDM diffusion standardises x given theta with a Gaussian linear in theta, and with one whose
# mean, scales and correlations are an MLP in theta where that beats it by more than this many
# nats per held-out row. At 1e5 simulations the diffusion learns departures of a few nats from
# unit-scale z (two_moons 2.3 nats, slcp 3.6: 0.14 and 0.30 nats left) but not 170 (the
# oscillator's: 4.34 left, 0.47 with the MLP); kept on two_moons the MLP leaves 0.13
STANDARDIZATION_GAIN = 10.0
STANDARDIZATION_STEPS = 32_000  # Adam steps of 1,024 rows at most; fewer where it overfits
# the oscillator's trajectories, ~10 periods over the prior of omega, at 1e5 simulations and
# 32,000 steps: the standardisation alone 0.47 nats from exact with three hidden layers of 256,
# 2.46 with two, 1.80 with two of 512
STANDARDIZATION_HIDDEN = (256, 256, 256)


def _families() -> dict[str, tuple[type, type]]:
    from simgen.models.diffusion import Diffusion, DiffusionConfig
    from simgen.models.flow import Flow, FlowConfig
    from simgen.models.vae import VAE, VAEConfig

    return {
        "flow": (FlowConfig, Flow),
        "vae": (VAEConfig, VAE),
        "diffusion": (DiffusionConfig, Diffusion),
    }


FAMILIES = ("flow", "vae", "diffusion")


# diffusion settings of the variance-preserving process alone: a user who sets one of them asks
# for that process, and the defaults then keep to it
VP_SETTINGS = frozenset({"time", "gaussian", "beta_min", "beta_max", "t_min", "parameterization"})


def defaults_for(
    family: str, x_shape: tuple[int, ...], user: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Family settings that suit this kind of x, under the user's own: on square 2-D maps the
    spectral flow (:mod:`simgen.models.spectral`, no coupling transforms), a convolutional U-Net
    denoiser for diffusion (side divisible by 2; with periodic padding it adds the exact
    denoiser of a stationary Gaussian field, ``spectral``) and a convolutional encoder and
    decoder for the VAE (side divisible by 8); otherwise MLPs, a flow that first standardises x
    given theta (``affine``; and decorrelates x of at most :data:`CORRELATED_MAX` values:
    ``correlated``; :data:`VECTOR_TRANSFORMS` spline transforms after it; for at most
    :data:`FIXED_GAUSSIAN_MAX` values the linear-Gaussian part held fixed where the noise is
    tiny: ``fixed_gaussian = "auto"``), with coupling transforms for x
    of more than :data:`AUTOREGRESSIVE_MAX` values (fully autoregressive sampling takes one pass
    per feature: 500x slower on 32x32 maps), and for diffusion an MLP with EDM on x
    standardised given theta as the flow's and held, with an MLP in theta fitted by maximum
    likelihood where it gains more than :data:`STANDARDIZATION_GAIN` nats per row over the
    linear Gaussian (``affine_*``: :mod:`simgen.models.standardize`; ``process = "edm"``, 18
    Heun steps per sample, a 16-feature time embedding: with 64 the MLP's training stays at the
    Gaussian's loss on gaussian_mixture's scale mixture; three hidden layers of 256 for x of at
    most :data:`DEEP_DENOISER_MAX` values, two above, whose exact divergence costs one
    matrix-vector product more than the network at any size of x:
    :meth:`simgen.models.nn.MLP.forward_and_trace`), for the VAE on vectors the same held
    standardisation, linear in theta, a two-transform spline flow as its decoder (a diagonal
    Gaussian for x of more than :data:`AUTOREGRESSIVE_MAX` values) and a density from 32
    importance samples (:mod:`simgen.models.vae`), or the variance-preserving process with the
    exact denoiser of a Gaussian linear in theta (``gaussian``) where the ``user``'s settings
    ask for it (``process = "vp"``) or name one of
    :data:`VP_SETTINGS` or ``network = "unet"``."""
    side = x_shape[0] if len(x_shape) == 2 and x_shape[0] == x_shape[1] else 0
    if family == "flow" and side:
        return {"network": "spectral", "transforms": 0}
    if family == "flow":
        d_x = math.prod(x_shape)
        return {
            "affine": True,
            "transforms": VECTOR_TRANSFORMS,
            "scale_bound": "tanh",
            **({"fixed_gaussian": "auto"} if d_x <= FIXED_GAUSSIAN_MAX else {}),
            **({"correlated": True} if d_x <= CORRELATED_MAX else {}),
            **({"passes": 2} if d_x > AUTOREGRESSIVE_MAX else {}),
        }
    user = user or {}
    if family == "diffusion" and side and side % 2 == 0:
        periodic = user.get("circular", True) and user.get("process", "vp") == "vp"
        return {"network": "unet", "spectral": bool(periodic) and not user.get("gaussian")}
    vp = set(user) & VP_SETTINGS or user.get("network", "mlp") != "mlp"
    if family == "diffusion" and (vp or user.get("process") == "vp"):
        return {} if user.get("process") == "edm" else {"gaussian": True}
    if family == "diffusion":
        d_x = math.prod(x_shape)
        return {
            "process": "edm",
            "hidden": (256, 256, 256) if d_x <= DEEP_DENOISER_MAX else (256, 256),
            "affine_hidden": STANDARDIZATION_HIDDEN,
            "affine_steps": STANDARDIZATION_STEPS,
            "affine_gain": STANDARDIZATION_GAIN,
            "steps": 18,
            "embedding": 16,
            "correlated": d_x <= CORRELATED_MAX,
            "fixed_gaussian": "auto" if d_x <= FIXED_GAUSSIAN_MAX else False,
        }
    if family == "vae" and side and side % 8 == 0:
        return {"network": "conv"}
    if family == "vae" and user.get("network", "mlp") == "mlp":
        d_x = math.prod(x_shape)
        return {
            "affine": True,
            "held": True,
            "correlated": d_x <= CORRELATED_MAX,
            "fixed_gaussian": "auto" if d_x <= FIXED_GAUSSIAN_MAX else False,
            "decoder": "flow" if d_x <= AUTOREGRESSIVE_MAX else "gaussian",
            "hidden": (128, 128),
            "iw_samples": 32,
        }
    return {}


def build_family(family: str, d_x: int, d_theta: int, config: dict[str, Any]) -> Family:
    """Instantiate family ``family`` from a plain configuration dict (unknown keys refused)."""
    if family not in FAMILIES:
        raise UsageError(f"unknown model family '{family}'; choose one of {', '.join(FAMILIES)}")
    config_cls, model_cls = _families()[family]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(config) - names
    if unknown:
        raise UsageError(
            f"unknown {family} setting(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}"
        )
    try:
        cfg = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad {family} setting: {error}") from None
    return model_cls(d_x, d_theta, cfg)
