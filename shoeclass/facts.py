"""The declared facts: the one schema that the Python API, the CLI and the HTTP service all read.

A customs declarant states what the photos cannot show (materials, toe-cap, insole length, gender)
and may also state any of the 13 visual attributes, overriding the photos. Every fact is optional;
an unstated fact is left to the photos or to the rules file's prior (``shoeclass.tariff``).

``FACTS`` lists each fact once: its name, type, allowed values, the short name the CLI and the
service also accept, the visual attribute(s) it declares, and the help text shown to users.
:class:`DeclaredFacts` is generated from it, and so are the CLI flags (``cli.py``) and the form
fields of ``POST /v1/classify`` (``service.py``).

Example:
    >>> DeclaredFacts.from_dict({"upper": "leather", "metal_toecap": "no", "insole_cm": "27"})
    DeclaredFacts(upper_material='leather', ..., metal_toecap=False, insole_cm=27.0, ...)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, Mapping

__all__ = ["Fact", "FACTS", "FACT_NAMES", "ALIASES", "DeclaredFacts", "parse_fact"]

_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class Fact:
    """One fact a declarant can state.

    Attributes:
        name: the field name (``DeclaredFacts.<name>``, JSON key, ``--name`` on the CLI).
        kind: ``choice`` (one of ``choices``), ``bool`` or ``cm`` (a length in cm >= 0).
        help: what the fact means, in the declarant's words.
        choices: the allowed values of a ``choice`` fact.
        alias: a shorter name the CLI and the service accept too (``upper`` for ``upper_material``).
        attributes: the visual attributes this fact declares (a stated value overrides the photos).
    """

    name: str
    kind: str
    help: str
    choices: tuple[str, ...] = ()
    alias: str | None = None
    attributes: tuple[str, ...] = ()

    def describe(self) -> str:
        """Help text with the allowed values, as the CLI and the service show it."""
        allowed = {"choice": ", ".join(self.choices), "bool": "yes/no", "cm": "a length in cm"}[self.kind]
        return f"{self.help} ({allowed})"


FACTS: tuple[Fact, ...] = (
    Fact("upper_material", "choice",
         "material of the upper's greatest external surface, accessories and lining ignored (Note 4(a))",
         ("leather", "composition_leather", "rubber", "plastics", "textile", "other"), alias="upper"),
    Fact("sole_material", "choice",
         "material of the outer sole's greatest ground-contact area (Note 4(b))",
         ("rubber", "plastics", "leather", "composition_leather", "wood", "cork", "textile", "other"),
         alias="sole"),
    Fact("waterproof_construction", "bool",
         "waterproof, the upper neither fixed to the sole nor assembled by stitching, riveting, nailing, "
         "screwing or plugging (heading 6401)", attributes=("waterproof",)),
    Fact("metal_toecap", "bool", "incorporates a protective metal toe-cap"),
    Fact("insole_cm", "cm", "insole length (splits < 24 cm / 24 cm or more)"),
    Fact("gender", "choice", "men's, women's, or not identifiable as either (unisex, children's)",
         ("men", "women", "unisex", "children", "not_identifiable")),
    Fact("heel_sole_cm", "cm", "measured height of sole and heel together (splits > 3 cm)",
         attributes=("high_heel",)),
    Fact("sports_kind", "choice",
         "ski or snowboard boot; other sports footwear of Subheading Note 1 (spikes, cleats, skating, "
         "wrestling, boxing, cycling); athletic (tennis, basketball, gym, training and the like); none",
         ("ski", "snowboard", "other_sports", "athletic", "none"), attributes=("sports",)),
    Fact("indoor", "bool", "slippers or other indoor footwear", attributes=("indoor",)),
    Fact("wood_base", "bool", "made on a base or platform of wood, without an inner sole", attributes=("wood_base",)),
    Fact("height", "choice",
         "how high the upper reaches: low (below the ankle), ankle (covers the ankle, not the calf), "
         "knee (covers the calf, up to the knee), over_knee",
         ("low", "ankle", "knee", "over_knee"),
         attributes=("height_low", "height_ankle", "height_knee", "height_over_knee")),
    Fact("vamp_straps", "bool", "the vamp is made of straps", attributes=("vamp_straps",)),
    Fact("vamp_openings", "bool", "the vamp has one or more pieces cut out", attributes=("vamp_openings",)),
    Fact("straps_plugged", "bool",
         "upper straps or thongs assembled to the sole by plugs visible on the tread (flip-flop)",
         attributes=("straps_plugged",)),
    Fact("toe_strap", "bool", "upper of straps across the instep and around the big toe", attributes=("toe_strap",)),
)

FACT_NAMES: tuple[str, ...] = tuple(f.name for f in FACTS)
_BY_NAME = {f.name: f for f in FACTS}
# every name a fact is accepted under (the field name and its short alias) -> field name
ALIASES: dict[str, str] = {**{f.name: f.name for f in FACTS}, **{f.alias: f.name for f in FACTS if f.alias}}


def _norm(value: str) -> str:
    return value.strip().lower().replace("-", "_").replace(" ", "_")


def _check(fact: Fact, value: Any) -> Any:
    """The validated value of a fact from Python types (``None`` passes)."""
    if value is None:
        return None
    if fact.kind == "choice":
        norm = _norm(value) if isinstance(value, str) else value
        if norm not in fact.choices:
            raise ValueError(f"{fact.name} must be one of {list(fact.choices)} or None, got {value!r}")
        return norm
    if fact.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{fact.name} must be True, False or None, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{fact.name} must be a finite length in cm >= 0 or None, got {value!r}")
    return float(value)


def parse_fact(name: str, value: Any) -> Any:
    """A fact's value from text or JSON (``"yes"``, ``"27.5"``, ``true``), validated.

    Raises:
        ValueError: an unknown fact name or a bad value (the message names both and the allowed values).
    """
    if name not in ALIASES:
        raise ValueError(f"unknown declared fact {name!r}; allowed: {sorted(ALIASES)}")
    fact = _BY_NAME[ALIASES[name]]
    if isinstance(value, str) and fact.kind == "bool":
        low = value.strip().lower()
        if low not in _TRUE | _FALSE:
            raise ValueError(f"{fact.name} must be true/false (yes/no), got {value!r}")
        value = low in _TRUE
    elif isinstance(value, str) and fact.kind == "cm":
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{fact.name} must be a length in cm, got {value!r}") from None
    return _check(fact, value)


def _post_init(self) -> None:
    for fact in FACTS:
        object.__setattr__(self, fact.name, _check(fact, getattr(self, fact.name)))


def _from_dict(cls, data: Mapping[str, Any] | None):
    """Facts from a mapping (JSON, a form, CLI flags): field names or short aliases, values as
    Python types or text (``"yes"``, ``"27.5"``); ``None`` and ``""`` count as unstated.

    Raises:
        ValueError: an unknown name, a fact given twice, or a bad value.
    """
    out: dict[str, Any] = {}
    for name, value in (data or {}).items():
        if value is None or value == "":
            continue
        parsed = parse_fact(name, value)
        if ALIASES[name] in out:
            raise ValueError(f"{ALIASES[name]} is given twice (as {name!r} and under another name)")
        out[ALIASES[name]] = parsed
    return cls(**out)


def _stated(self) -> dict[str, Any]:
    """The stated facts only, ``{name: value}``."""
    return {k: v for k, v in asdict(self).items() if v is not None}


_DOC = "Facts the customs declarant states; ``None`` means not stated.\n\nAttributes:\n" + "".join(
    f"    {f.name}: {f.describe()}.\n" for f in FACTS) + (
    "\nRaises:\n    ValueError: a value outside the allowed ones (the message names field and allowed values).\n")

DeclaredFacts = make_dataclass(
    "DeclaredFacts", [(f.name, Any, field(default=None)) for f in FACTS], frozen=True,
    namespace={"__post_init__": _post_init, "from_dict": classmethod(_from_dict), "stated": _stated,
               "__doc__": _DOC})
DeclaredFacts.__module__ = __name__
