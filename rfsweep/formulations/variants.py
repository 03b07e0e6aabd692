"""Variant names of the paper (Sec. 5.1.1, Tables 1-2): the one home of the naming grammar.

Grammar (two decimals, ``", "`` between two parameters)::

    rf | rf/lognorm(m, s) | rf/mode(s) | rf/cosmap
    edm(P_mean, P_std) | edm/rf | edm/cos
    eps/linear | eps/cos | v/linear | v/cos

A variant can also be given as a mapping ``{"family": ..., <scheme key>: ..., **params}`` where the scheme
key is ``density`` for rf (``uniform | lognorm | mode | cosmap``) and ``schedule`` otherwise
(edm: ``lognormal | rf | cos``; eps and v: ``linear | cos``). Parameters: ``m, s`` (lognorm), ``s`` (mode),
``P_mean, P_std`` (edm lognormal). Omitted scheme keys default to ``uniform`` (rf) and ``lognormal`` (edm).
E.g. ``{"family": "rf", "density": "lognorm", "m": 0.0, "s": 1.0}``, ``{"family": "edm", "P_mean": -1.2,
"P_std": 1.2}``, ``{"family": "v", "schedule": "cos"}``; ``{"name": "rf/mode(1.29)"}`` also works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Mapping

from rfsweep.errors import VariantError  # noqa: F401 (raised here, defined in the one home of user errors)

Family = Literal["rf", "edm", "eps", "v"]  # the colour groups of Fig. 3
FAMILIES: tuple[Family, ...] = ("rf", "edm", "eps", "v")
MODE_S_MAX = 2 / (math.pi - 2)  # Sec. 3.1: f_mode is monotone only for -1 <= s <= 2/(pi-2)


@dataclass(frozen=True)
class Scheme:
    """One row of the registry: the name head, the parameter names and the class that implements it
    (`<module>:<class>`, imported when built)."""

    head: str
    params: tuple[str, ...]
    implementation: str


# (family, scheme) -> Scheme: the one registry of the variants. The scheme key is "density" for rf, else
# "schedule". A 62nd formulation is a row here (and its class, if no existing one implements it).
SCHEMES: dict[tuple[Family, str], Scheme] = {
    ("rf", "uniform"): Scheme("rf", (), "rfsweep.formulations.rf:RectifiedFlow"),
    ("rf", "lognorm"): Scheme("rf/lognorm", ("m", "s"), "rfsweep.formulations.rf:RectifiedFlow"),
    ("rf", "mode"): Scheme("rf/mode", ("s",), "rfsweep.formulations.rf:RectifiedFlow"),
    ("rf", "cosmap"): Scheme("rf/cosmap", (), "rfsweep.formulations.rf:RectifiedFlow"),
    ("edm", "lognormal"): Scheme("edm", ("P_mean", "P_std"), "rfsweep.formulations.edm:EDM"),
    ("edm", "rf"): Scheme("edm/rf", (), "rfsweep.formulations.edm:EDM"),
    ("edm", "cos"): Scheme("edm/cos", (), "rfsweep.formulations.edm:EDM"),
    ("eps", "linear"): Scheme("eps/linear", (), "rfsweep.formulations.vp:LinearVP"),
    ("eps", "cos"): Scheme("eps/cos", (), "rfsweep.formulations.vp:CosineVP"),
    ("v", "linear"): Scheme("v/linear", (), "rfsweep.formulations.vp:LinearVP"),
    ("v", "cos"): Scheme("v/cos", (), "rfsweep.formulations.vp:CosineVP"),
}
GRAMMAR = " | ".join(f"{s.head}({', '.join(s.params)})" if s.params else s.head for s in SCHEMES.values())
_BY_HEAD = {s.head: key for key, s in SCHEMES.items()}
_NAME = re.compile(r"^(?P<head>[a-z]+(?:/[a-z]+)?)(?:\((?P<args>[^()]*)\))?$")
_NUM = re.compile(r"^-?\d+(?:\.\d{1,2})?$")


@dataclass(frozen=True)
class VariantSpec:
    """family in FAMILIES; scheme: the rf density or the schedule; params in SCHEMES' order."""

    family: Family
    scheme: str
    params: tuple[float, ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return SCHEMES[(self.family, self.scheme)].params

    @property
    def name(self) -> str:
        """The paper's name, e.g. rf/lognorm(0.00, 1.00)."""
        return format_variant(self)

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(zip(self.param_names, self.params))

    def as_dict(self) -> dict:
        key = "density" if self.family == "rf" else "schedule"
        return {"family": self.family, key: self.scheme, **dict(zip(self.param_names, self.params))}


def _check(spec: VariantSpec) -> VariantSpec:
    where = format_variant(spec)
    for k, x in zip(spec.param_names, spec.params):
        if not math.isfinite(x) or abs(round(x, 2) - x) > 1e-9:
            raise VariantError(f"{where}: {k}={x!r} must be finite with at most two decimals (name format)")
    p = dict(zip(spec.param_names, spec.params))
    if spec.scheme == "mode" and not -1 <= p["s"] <= MODE_S_MAX + 1e-12:
        raise VariantError(f"{where}: s={p['s']} outside [-1, {MODE_S_MAX:.4f}] where f_mode is monotone (Sec. 3.1)")
    if spec.scheme == "lognorm" and p["s"] <= 0:
        raise VariantError(f"{where}: logit-normal s={p['s']} must be > 0")
    if spec.scheme == "lognormal" and p["P_std"] <= 0:
        raise VariantError(f"{where}: P_std={p['P_std']} must be > 0")
    return spec


def _fmt(x: float) -> str:
    return f"{x + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def format_variant(spec: VariantSpec) -> str:
    scheme = SCHEMES.get((spec.family, spec.scheme))
    if scheme is None:
        raise VariantError(f"formulation family={spec.family!r} scheme={spec.scheme!r} is unknown (allowed: {GRAMMAR})")
    return f"{scheme.head}({', '.join(_fmt(x) for x in spec.params)})" if scheme.params else scheme.head


def name_slug(name: str) -> str:
    """A variant's name as a file-system friendly folder name: rf/lognorm(0.00, 1.00) -> rf-lognorm_0.00_1.00."""
    return name.replace("/", "-").replace("(", "_").replace(")", "").replace(", ", "_").replace(" ", "")


def parse_variant(name: str) -> VariantSpec:
    """Paper name -> VariantSpec; raises VariantError naming the offending part."""
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    if m is None or m["head"] not in _BY_HEAD:
        raise VariantError(f"unknown formulation {name!r}: expected {GRAMMAR} (families: {', '.join(FAMILIES)})")
    family, scheme = _BY_HEAD[m["head"]]
    names = SCHEMES[(family, scheme)].params
    args = [] if m["args"] is None else [a.strip() for a in m["args"].split(",")]
    if len(args) != len(names) or not all(_NUM.match(a) for a in args):
        want = f"{m['head']}({', '.join(names)})" if names else m["head"]
        raise VariantError(f"bad parameters in {name!r}: expected {want} with numbers of two decimals")
    return _check(VariantSpec(family, scheme, tuple(float(a) for a in args)))


def spec_from_mapping(d: Mapping) -> VariantSpec:
    """{"family": ..., "density"/"schedule": ..., **params} (or {"name": ...}) -> VariantSpec."""
    d = dict(d)
    if "name" in d:
        if len(d) != 1:
            raise VariantError(f"formulation mapping {d}: give either 'name' alone or family plus parameters")
        return parse_variant(d["name"])
    family = d.pop("family", None)
    if family not in FAMILIES:
        raise VariantError(f"formulation family={family!r}: allowed {', '.join(FAMILIES)}")
    key = "density" if family == "rf" else "schedule"
    default = {"rf": "uniform", "edm": "lognormal"}.get(family)
    scheme = d.pop(key, default)
    if (family, scheme) not in SCHEMES:
        allowed = ", ".join(s for f, s in SCHEMES if f == family)
        raise VariantError(f"formulation {family}: {key}={scheme!r} not one of {allowed}")
    names = SCHEMES[(family, scheme)].params
    missing, extra = [k for k in names if k not in d], sorted(set(d) - set(names))
    if missing or extra:
        raise VariantError(f"formulation {family}/{scheme}: parameters {sorted(d)} given, "
                           f"expected exactly {list(names)} (missing {missing}, unknown {extra})")
    return _check(VariantSpec(family, scheme, tuple(float(d[k]) for k in names)))


def _grid() -> tuple[str, ...]:
    # Sec. 5.1.1 and PAPER.md Sec. 2, in that order.
    mode_s = (-1.0, -0.54, -0.08, 0.38, 0.83, 1.29, 1.75)  # linspace(-1, 1.75, 7) at two decimals
    spec = [VariantSpec(f, s) for f, s in (("eps", "linear"), ("v", "linear"), ("eps", "cos"), ("v", "cos"))]
    spec += [VariantSpec("rf", "mode", (s,)) for s in mode_s]
    spec += [VariantSpec("rf", "mode", (1.0,)), VariantSpec("rf", "uniform")]
    spec += [VariantSpec("rf", "lognorm", (m, s)) for m in (-1.0, -0.5, 0.0, 0.5, 1.0)
             for s in (0.2, 0.6, 1.0, 1.4, 1.8, 2.2)]
    spec += [VariantSpec("rf", "cosmap")]
    spec += [VariantSpec("edm", "lognormal", (pm, ps)) for pm in (-1.2, -0.6, 0.0, 0.6, 1.2) for ps in (0.6, 1.2, 1.8)]
    spec += [VariantSpec("edm", "rf"), VariantSpec("edm", "cos")]
    return tuple(format_variant(s) for s in spec)


ALL_VARIANTS: tuple[str, ...] = _grid()
