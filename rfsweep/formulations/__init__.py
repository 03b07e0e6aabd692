"""The 61 formulations of the paper's study (Sec. 5.1.1) behind one builder.

``build_formulation("rf/lognorm(0.00, 1.00)")`` or ``build_formulation({"family": "rf", "density":
"lognorm", "m": 0.0, "s": 1.0})`` returns a ``Formulation`` (see ``base`` for the contract with backbones
and the sampler, ``variants`` for the naming grammar and mapping keys).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Mapping

from rfsweep.formulations.variants import (
    ALL_VARIANTS,
    GRAMMAR,
    SCHEMES,
    VariantError,
    VariantSpec,
    format_variant,
    name_slug,
    parse_variant,
    spec_from_mapping,
)

if TYPE_CHECKING:
    from rfsweep.formulations.base import Formulation

__all__ = ["ALL_VARIANTS", "VALIDATION_T", "Formulation", "VariantError", "VariantSpec", "build_formulation",
           "format_variant", "name_slug", "parse_variant"]


def build_formulation(spec: str | Mapping | VariantSpec, shift: float = 1.0) -> Formulation:
    """A paper name, a ``{family, density|schedule, **params}`` mapping, or a VariantSpec -> Formulation, built by
    the class the registry (``variants.SCHEMES``) names for it. ``shift``: the Sec. 5.3.2 shift of its training
    times, for the rf family (whose time is the rectified-flow time the shift is defined on)."""
    if isinstance(spec, str):
        spec = parse_variant(spec)
    elif isinstance(spec, Mapping):
        spec = spec_from_mapping(spec)
    elif not isinstance(spec, VariantSpec):
        raise VariantError(f"formulation spec {spec!r}: expected a name string, a mapping or a VariantSpec")
    scheme = SCHEMES.get((spec.family, spec.scheme))
    if scheme is None:
        raise VariantError(f"formulation {spec.family}/{spec.scheme} is unknown (allowed: {GRAMMAR})")
    if not (isinstance(shift, (int, float)) and shift > 0):
        raise VariantError(f"shift={shift!r} (allowed: a number > 0)")
    if shift != 1.0 and spec.family != "rf":
        raise VariantError(f"a training shift of {shift:g} applies to the rf family, not {spec.family} (allowed: 1 for "
                           f"{spec.family} variants)")
    module, cls = scheme.implementation.split(":")
    formulation = getattr(importlib.import_module(module), cls)(spec)
    formulation.shift = float(shift)
    return formulation


def __getattr__(name: str):
    """`Formulation` and `VALIDATION_T` come from `base`, which imports torch: loaded when first asked for, so that
    naming and checking a variant (the configs' resolvers, `python -m rfsweep --help`) imports no torch."""
    if name in ("Formulation", "VALIDATION_T"):
        from rfsweep.formulations import base  # deferred: torch (~1.5 s), not needed to name a variant

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
