"""The simulator interface and the registry of simulators.

A simulator draws ``x ~ p(x | theta)`` for a batch of parameters. simgen finds simulators three
ways, all through :func:`get_simulator`:

* classes decorated with :func:`register` in the running process;
* entry points in the group ``simgen.simulators`` of any installed package (the built-ins in
  ``simulators/`` are registered this way, through the same door as third-party plugins);
* import paths ``package.module:Class``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch

from simgen.errors import SimulatorError, UsageError

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "ENTRY_POINT_GROUP",
    "Simulator",
    "box_uniform",
    "describe_prior",
    "get_simulator",
    "option_spec",
    "parse_option",
    "parse_options",
    "register",
    "simulator_class",
    "simulators",
]

ENTRY_POINT_GROUP = "simgen.simulators"

S = TypeVar("S", bound=type["Simulator"])


def _no_options(self: object) -> None:
    """The signature of a simulator without options."""


class Simulator:
    r"""Base class of simulators of :math:`x \sim p(x \mid \theta)`.

    Subclasses set the class attributes ``name`` and ``parameters``, set ``x_shape`` (as a class
    attribute, or in ``__init__`` when it depends on options), and implement :meth:`prior` and
    :meth:`simulate`. Options are keyword arguments of ``__init__`` with defaults; simgen records
    them (see :attr:`options`) so that a data set says exactly how it was made.

    Example:
        >>> class Pendulum(Simulator):
        ...     name = "pendulum"
        ...     parameters = ("length", "damping")
        ...     x_shape = (50,)
        ...     def __init__(self, noise: float = 0.05):
        ...         self.noise = noise
        ...     def prior(self):
        ...         return box_uniform([0.5, 0.0], [2.0, 0.5])
        ...     def simulate(self, theta, rng):
        ...         t = np.linspace(0, 10, 50)
        ...         angle = np.exp(-theta[:, 1:] * t) * np.cos(np.sqrt(9.81 / theta[:, :1]) * t)
        ...         return angle + self.noise * rng.standard_normal(angle.shape)
        >>> sim = Pendulum(noise=0.1)
        >>> sim.options
        {'noise': 0.1}
        >>> sim.simulate(np.array([[1.0, 0.2]]), np.random.default_rng(0)).shape
        (1, 50)
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[tuple[str, ...]] = ()
    x_shape: tuple[int, ...] = ()
    chunk_size: ClassVar[int] = 1000
    """Rows simulated per task; part of a data set's identity (it fixes the random streams)."""

    _options: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls)
        init = cls.__init__ if cls.__init__ is not object.__init__ else _no_options
        try:
            bound = inspect.signature(init).bind(self, *args, **kwargs)
        except TypeError as error:
            spec = ", ".join(option_spec(cls)) or "(none)"
            raise UsageError(
                f"bad options for simulator '{cls.name or cls.__name__}': {error}; "
                f"its options are: {spec}"
            ) from None
        bound.apply_defaults()
        self._options = {k: v for k, v in list(bound.arguments.items())[1:]}
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The constructor's keyword arguments, defaults included."""
        return dict(self._options)

    @property
    def d_theta(self) -> int:
        """Number of parameters, ``len(parameters)``."""
        return len(self.parameters)

    def prior(self) -> torch.distributions.Distribution:
        r"""The prior :math:`p(\theta)`, with event shape ``(d_theta,)``."""
        raise NotImplementedError(f"simulator '{self.name}' defines no prior()")

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r"""Draw one :math:`x \sim p(x \mid \theta)` per row.

        Args:
            theta: Parameters, shape ``(n, d_theta)``, float64.
            rng: The only source of randomness allowed, so that data are reproducible.

        Returns:
            Simulations, shape ``(n, *x_shape)``. Rows that fail may be NaN.
        """
        raise NotImplementedError(f"simulator '{self.name}' defines no simulate()")

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact :math:`\log p(x \mid \theta)` where it is tractable.

        Args:
            x: Observations, shape ``(n, *x_shape)``.
            theta: Parameters, shape ``(n, d_theta)``.

        Returns:
            Log densities, shape ``(n,)``.
        """
        raise NotImplementedError(f"simulator '{self.name}' has no exact log-likelihood")

    @property
    def has_log_likelihood(self) -> bool:
        """Whether the subclass implements :meth:`log_likelihood`."""
        return type(self).log_likelihood is not Simulator.log_likelihood

    def log_unnormalized(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r""":math:`\log p(x \mid \theta) + c(\theta)`: the log density up to a constant in x,
        where the normaliser is unknown (a Boltzmann density :math:`e^{-U(x) / T}`), and
        ``-inf`` outside the support of x. :func:`simgen.inference.metropolis.metropolized_sample` uses
        it to make emulated samples exact. Defaults to :meth:`log_likelihood`.

        Args:
            x: Values, shape ``(n, *x_shape)``, float64.
            theta: Parameters, shape ``(n, d_theta)``, float64.

        Returns:
            Log densities, shape ``(n,)``.
        """
        if self.has_log_likelihood:
            return self.log_likelihood(x, theta)
        raise NotImplementedError(f"simulator '{self.name}' has no unnormalised log density")

    @property
    def has_log_unnormalized(self) -> bool:
        """Whether :meth:`log_unnormalized` is available (implemented, or an exact
        :meth:`log_likelihood`)."""
        return self.has_log_likelihood or (
            type(self).log_unnormalized is not Simulator.log_unnormalized
        )

    def check_output(self, x: Any, n: int) -> np.ndarray:
        """Validate what :meth:`simulate` returned for ``n`` rows; return it as float32.

        Raises:
            SimulatorError: naming the simulator and what it returned, when the shape or dtype
                breaks the contract.
        """
        expected = (n, *self.x_shape)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise SimulatorError(
                f"simulator '{self.name}' returned {type(x).__name__}; "
                f"simulate() must return a numpy array of shape {expected}"
            )
        if x.dtype.kind not in "fiub":
            raise SimulatorError(
                f"simulator '{self.name}' returned dtype {x.dtype}; "
                "simulate() must return real numbers (float or int)"
            )
        if x.shape != expected:
            raise SimulatorError(
                f"simulator '{self.name}' returned shape {x.shape} for {n} rows; "
                f"expected {expected} (rows, *x_shape)"
            )
        return x.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}({options})"


_REGISTRY: dict[str, type[Simulator]] = {}


def register(cls: S) -> S:
    """Class decorator that registers a :class:`Simulator` under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Simulator)):
        raise TypeError("@simgen.register expects a subclass of simgen.Simulator")
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def _entry_points() -> dict[str, EntryPoint]:
    return _scan_entry_points(tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _scan_entry_points(search_path: tuple[str, ...]) -> dict[str, EntryPoint]:
    """Entry points of the group, cached per ``sys.path`` (scanning reads every package)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(ep: EntryPoint) -> type[Simulator]:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Simulator)):
        raise TypeError(f"{ep.value} is not a subclass of simgen.Simulator")
    return cls


def simulators(load: bool = False) -> list[str] | dict[str, type[Simulator]]:
    """Names of all registered simulators (decorated and entry points), sorted.

    Example:
        >>> "two_moons" in simulators()
        True

    Args:
        load: Return ``{name: class}`` instead, loading every plugin; a plugin that fails to
            load is left out with a warning that names it, and the others still load.
    """
    names = set(_REGISTRY) | set(_entry_points())
    if not load:
        return sorted(names)
    classes: dict[str, type[Simulator]] = {}
    for name in sorted(names):
        try:
            classes[name] = simulator_class(name)
        except UsageError as error:
            warnings.warn(str(error), stacklevel=2)
    return classes


def simulator_class(name: str) -> type[Simulator]:
    """The class registered under ``name``, or found at the import path ``package.module:Class``.

    Raises:
        UsageError: for an unknown name (listing the available ones and the closest match), an
            import path that does not import, or a plugin that fails to load.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        try:
            return _load_entry_point(eps[name])
        except Exception as error:  # noqa: BLE001 (a broken plugin can raise anything)
            raise UsageError(
                f"simulator plugin '{name}' ({eps[name].value}) failed to load: "
                f"{type(error).__name__}: {error}"
            ) from None
    if ":" in name:
        return _import_path(name)
    known = sorted(set(_REGISTRY) | set(eps))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UsageError(
        f"unknown simulator '{name}'.{hint} Available: {', '.join(known) or '(none)'}; "
        "or give an import path package.module:Class"
    )


def _import_path(path: str) -> type[Simulator]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as error:  # noqa: BLE001 (user code can raise anything)
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]:
            hint = " (is its folder on the Python path? e.g. PYTHONPATH=. for the current one)"
        raise UsageError(
            f"cannot import simulator '{path}': {type(error).__name__}: {error}{hint}"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Simulator)):
        raise UsageError(f"'{path}' is not a subclass of simgen.Simulator")
    return obj


def get_simulator(name: str, **options: Any) -> Simulator:
    """Instantiate the simulator ``name`` (registered name or import path) with ``options``.

    Example:
        >>> sim = get_simulator("gaussian_linear", dim=3)
        >>> sim.parameters, sim.x_shape
        (('theta_1', 'theta_2', 'theta_3'), (3,))
    """
    cls = simulator_class(name)
    sim = cls(**options)
    if not sim.name:
        sim.name = name  # an unnamed class found by import path is known by that path
    return sim


def option_spec(cls: type[Simulator]) -> dict[str, dict[str, Any]]:
    """The options of a simulator class: ``{name: {"type": str, "default": value}}``."""
    spec = {}
    init = cls.__init__ if cls.__init__ is not object.__init__ else _no_options
    for param in list(inspect.signature(init).parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        type_name = annotation if isinstance(annotation, str) else annotation.__name__
        default = None if param.default is param.empty else param.default
        spec[param.name] = {"type": str(type_name), "default": default}
    return spec


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": lambda s: {"true": True, "1": True, "false": False, "0": False}[s.lower()],
}


def parse_option(cls: type[Simulator], text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` option string against the class's option types.

    Raises:
        UsageError: naming the option and the expected form.
    """
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    spec = option_spec(cls)
    name = cls.name or cls.__name__
    if not sep or not key:
        raise UsageError(f"option '{text}' should look like key=value, e.g. --option size=64")
    if key not in spec:
        available = ", ".join(f"{k} ({v['type']})" for k, v in spec.items()) or "(none)"
        raise UsageError(f"simulator '{name}' has no option '{key}'; its options: {available}")
    type_name = spec[key]["type"].replace(" ", "")
    converter = _CONVERTERS.get(type_name.split("|")[0], json.loads)
    try:
        return key, converter(value)
    except (ValueError, KeyError):
        raise UsageError(
            f"option '{key}' of simulator '{name}' expects {type_name}, got '{value}'"
        ) from None


def parse_options(name: str, texts: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Options of the simulator ``name`` from ``key=value`` strings (``--option``), each
    parsed against the option's type (:func:`parse_option`)."""
    cls = simulator_class(name)
    return dict(parse_option(cls, text) for text in texts)


def describe_prior(prior: torch.distributions.Distribution) -> dict[str, Any]:
    """A JSON-ready description of a prior: its class and parameters, recursively."""
    description: dict[str, Any] = {"type": type(prior).__name__}
    for key in getattr(prior, "arg_constraints", {}):
        value = getattr(prior, key, None)
        if isinstance(value, torch.Tensor):
            description[key] = value.tolist()
    if isinstance(prior, torch.distributions.Independent):
        description["reinterpreted_batch_ndims"] = prior.reinterpreted_batch_ndims
        description["base"] = describe_prior(prior.base_dist)
    description["event_shape"] = list(prior.event_shape)
    return description


def box_uniform(low: Any, high: Any) -> torch.distributions.Distribution:
    """A uniform prior on the box ``[low, high]``, event shape ``(d,)`` (sbi's ``BoxUniform``).

    Example:
        >>> prior = box_uniform([0.0, -1.0], [1.0, 1.0])
        >>> prior.sample((5,)).shape, prior.event_shape
        (torch.Size([5, 2]), torch.Size([2]))
    """
    low_t = torch.as_tensor(low, dtype=torch.float32)
    high_t = torch.as_tensor(high, dtype=torch.float32)
    return torch.distributions.Independent(torch.distributions.Uniform(low_t, high_t), 1)
