"""The thirteen visual attributes of the seed paper (Table 1) plus ``not_footwear``.

Source: Polyakov & Polyakov 2025, shared/spec/attributes.md. A label vector holds one value per
attribute: 1 present, 0 absent, 0.5 unknown / photo unsuitable (a mask, never a target).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attribute", "ATTRIBUTES", "ATTRIBUTE_KEYS", "HEIGHT_KEYS", "NOT_FOOTWEAR", "OUTPUT_KEYS", "MASK"]

MASK = 0.5


@dataclass(frozen=True)
class Attribute:
    key: str
    paper_name: str
    description: str
    headings: str


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("vamp_openings", "ПЕРФОРАЦИЯ_СОЮЗКА",
              "the vamp has one or more pieces cut out: cut-outs, peep toe, ventilation holes, openwork",
              "6402 99 31/39, 6403 59 11–39, 6403 99 11–38"),
    Attribute("vamp_straps", "РЕМЕШКИ_СОЮЗКА",
              "the vamp is made of straps or bands (sandals, strappy shoes)",
              "6402 99 31/39, 6403 59 11–39, 6403 99 11–38"),
    Attribute("straps_plugged", "РЕМЕШКИ_ЗАКЛЕПКИ",
              "upper of straps or thongs fixed to the sole by plugs/rivets through it (flip-flop / zori)",
              "6402 20"),
    Attribute("toe_strap", "РЕМЕШКИ_ПАЛЕЦ",
              "straps across the instep and around the big toe", "6403 20"),
    Attribute("waterproof", "ВОДА",
              "waterproof moulded rubber/plastic footwear (wellingtons, galoshes, one-piece moulded boots)",
              "6401"),
    Attribute("wood_base", "ПЛАТФОРМА_ДЕРЕВО", "base or platform of wood, without an inner sole",
              "6403 51 05, 59 05, 91 05, 99 05; 6405 10 000 1, 6405 20 10"),
    Attribute("sports", "СПОРТ",
              "sports footwear: spikes, cleats, studs; ski/snowboard boots; tennis, basketball, gym, training shoes",
              "6402 12/19, 6403 12/19, 6404 11"),
    Attribute("indoor", "ДОМ", "slippers and other indoor (house) footwear",
              "6402 99 50, 6403 59 50, 6403 99 50, 6404 19 10, 6404 20 10, 6405 20 91"),
    Attribute("high_heel", "КАБЛУК", "heel and sole together higher than 3 cm",
              "6402 99 31, 6403 59 11, 6403 99 11"),
    Attribute("height_low", "Высота: Н", "the upper does not cover the ankle", "6402 99, 6403 59, 6403 99"),
    Attribute("height_ankle", "Высота: С", "covers the ankle but no part of the calf",
              "6403 51 11–19, 6403 91 11–18, 6401 92, 6402 91"),
    Attribute("height_knee", "Высота: В", "covers the ankle and the calf, up to the knee",
              "6401 92, 6403 51 91–99, 6403 91 91–98"),
    Attribute("height_over_knee", "Высота: СВ", "reaches above the knee", "6401 99"),
)

NOT_FOOTWEAR = Attribute(
    "not_footwear", "НЕ_ОБУВЬ",
    "not footwear at all (no applied sole, shoe covers, socks, apparel, bags …: chapter 64 note 1)",
    "none of 6401–6405",
)

ATTRIBUTE_KEYS: tuple[str, ...] = tuple(a.key for a in ATTRIBUTES)
HEIGHT_KEYS: tuple[str, ...] = ("height_low", "height_ankle", "height_knee", "height_over_knee")
# The model predicts the 13 attributes and not_footwear: 14 outputs, in this order.
OUTPUT_KEYS: tuple[str, ...] = ATTRIBUTE_KEYS + (NOT_FOOTWEAR.key,)
