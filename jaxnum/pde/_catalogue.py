"""The problem catalogue: names (as used by `jaxnum generate <name>`) to classes."""

import importlib
import inspect
from typing import Any

from ._problem import AbstractProblem

# name -> (module inside jaxnum.pde, class name). Classes are imported on demand.
_REGISTRY: dict[str, tuple[str, str]] = {
    "poisson": ("._elliptic", "Poisson"),
    "darcy": ("._elliptic", "Darcy"),
    "helmholtz": ("._elliptic", "Helmholtz"),
    "convection_diffusion": ("._elliptic", "ConvectionDiffusion"),
    "heat": ("._reaction_diffusion", "Heat"),
    "fisher_kpp": ("._reaction_diffusion", "FisherKPP"),
    "advection": ("._advection", "Advection"),
    "burgers": ("._burgers", "Burgers"),
    "navier_stokes": ("._navier_stokes", "NavierStokes2D"),
    "kuramoto_sivashinsky": ("._kuramoto_sivashinsky", "KuramotoSivashinsky"),
}
_ALIASES = {"navier_stokes_2d": "navier_stokes", "ks": "kuramoto_sivashinsky", "fisher": "fisher_kpp"}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _load(name: str) -> type[AbstractProblem] | None:
    module_name, class_name = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name, __package__)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}{module_name}":
            raise  # a real import error inside an existing module: let it show
        return None
    return getattr(module, class_name, None)


def problem_names() -> list[str]:
    """The catalogue names whose classes are available in this installation."""
    return [name for name in _REGISTRY if _load(name) is not None]


def problem_class(name: str) -> type[AbstractProblem]:
    """The problem class registered under `name` (case and `-`/`_` insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"A problem name must be a string; got {type(name).__name__}.")
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    cls = _load(key) if key in _REGISTRY else None
    if cls is None:
        raise ValueError(
            f"Unknown problem {name!r}. Known problems: {', '.join(problem_names()) or '(none)'}."
        )
    return cls


def problem_from_name(name: str, resolution: int | None = None, **options: Any) -> AbstractProblem:
    """Builds a catalogue problem by name.

    **Arguments:**

    - `name`: a catalogue name (`"darcy"`, `"burgers"`, ...; see `problem_names()`).
    - `resolution`: grid points per axis, passed as `resolution=` (must be positive).
    - `options`: further keyword arguments of the problem class (e.g. `ndim=3`,
        `coefficient="lognormal"` for Darcy; `ndim` is passed as `dims` to classes
        that spell it so).

    **Returns:** the problem instance.

    Raises `ValueError` for an unknown name, a non-positive resolution or options the
    class does not accept, before anything is computed.
    """
    cls = problem_class(name)
    if resolution is not None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"`resolution` must be a positive integer; got {resolution!r}.")
        options["resolution"] = resolution
    signature = inspect.signature(cls)
    if "ndim" in options and "ndim" not in signature.parameters and "dims" in signature.parameters:
        options["dims"] = options.pop("ndim")  # the time-dependent classes spell it `dims`
    try:
        signature.bind(**options)
    except TypeError as e:
        raise ValueError(
            f"{cls.__name__} does not accept the options {sorted(options)} ({e}). "
            f"Its signature is {cls.__name__}{signature}."
        ) from None
    return cls(**options)
