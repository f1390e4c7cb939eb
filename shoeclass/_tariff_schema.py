"""The strict schema of the tariff rules YAML (pydantic): an unknown key is refused.

Private helper of :mod:`shoeclass._tariff_rules`; errors name the file, the path inside it and
the key (``rules.yaml: tree[0].children[1]: unknown key 'atribute'``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

Value = str | bool


class RulesError(ValueError):
    """The rules file is not a valid rule tree; the message names the file, the path and the key."""


# ------------------------------------------------------------------------------ schema of the YAML
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class CaseSpec(_Strict):
    """``{value: v, gt: x}`` / ``{value: v, ge: x}`` / ``{value: v}``: the first that holds wins."""

    value: Value
    gt: float | None = None
    ge: float | None = None


class SeenPriorSpec(_Strict):
    """With probability p(attribute) the value follows ``prior`` instead of the variable's prior
    (an attribute whose definition implies the fact, e.g. a moulded waterproof boot is rubber or
    plastics)."""

    attribute: str
    prior: dict[Value, float]


class VariableSpec(_Strict):
    values: list[Value]
    field: str | None = None  # the DeclaredFacts field that fixes the value when stated
    attribute: str | None = None  # a visual attribute read as p(true) (or p(not absent_value))
    attributes: list[str] = []  # an ordered categorical read from several attribute heads
    readout: Literal["ordered"] | None = None
    absent_value: Value | None = None
    cases: list[CaseSpec] = []  # numeric fact -> value
    map: dict[str, Value] = {}  # declared value -> variable value (e.g. unisex -> not_identifiable)
    assumed_map: dict[str, str] = {}  # declared value -> note naming the assumption its mapping makes
    prior: dict[Value, float] | None = None  # weights over values (normalised) when unstated
    seen_prior: SeenPriorSpec | None = None  # the prior when an attribute says more


class NodeSpec(_Strict):
    code: str | None = None
    text: str = ""
    when: dict[str, Any] = {}
    rules: list[str] = []
    assumed_when: dict[str, Any] = {}  # the node is taken under an assumption when this holds
    children: list["NodeSpec"] = []


class RulesSpec(_Strict):
    id: str
    version: str
    leaf_count: int
    variables: dict[str, VariableSpec]
    notes: dict[str, str]
    tree: list[NodeSpec]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_error(path: Path, exc: ValidationError) -> RulesError:
    lines = []
    for e in exc.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("str", "bool", "float")))
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: {_loc(loc[:-1])}: unknown key {loc[-1]!r}")
        elif e["type"] == "missing":
            lines.append(f"{path}: {_loc(loc[:-1])}: missing key {loc[-1]!r}")
        else:
            lines.append(f"{path}: {_loc(loc)}: {e['msg']} (got {e.get('input')!r})")
    return RulesError("rules file is invalid:\n  " + "\n  ".join(dict.fromkeys(lines)))
