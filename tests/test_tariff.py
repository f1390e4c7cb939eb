"""Tariff mapping 6401-6405: every TN VED leaf reachable, HS subheadings, probability properties.

Offline and fast: reads only configs/tariff_ch64.yaml (through shoeclass.tariff).
"""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoeclass.attributes import HEIGHT_KEYS, OUTPUT_KEYS
from shoeclass.tariff import DeclaredFacts, RulesError, classify_tariff, leaf_codes, load_tariff_rules

SPEC_LEAF_COUNT = 71  # spec §2: 4 + 15 + 40 + 5 + 7


def crisp(*present: str, height: str = "low", not_footwear: float = 0.0) -> dict[str, float]:
    """0/1 attribute probabilities: the named attributes present, one height head set."""
    probs = {k: 0.0 for k in OUTPUT_KEYS}
    for key in present:
        probs[key] = 1.0
    probs[f"height_{height}"] = 1.0
    probs["not_footwear"] = not_footwear
    return probs


def facts(upper: str, sole: str, **extra) -> DeclaredFacts:
    """Fully stated facts (toe-cap no, insole 27 cm, men) unless overridden."""
    base = {"upper_material": upper, "sole_material": sole, "metal_toecap": False,
            "insole_cm": 27.0, "gender": "men"}
    base.update(extra)
    return DeclaredFacts(**base)


M = {"metal_toecap": True}
SMALL = {"insole_cm": 22.0}
UNI = {"gender": "unisex"}
WOMEN = {"gender": "women"}

# leaf -> (present attributes, height, upper, sole, extra facts)
LEAF_CASES: dict[str, tuple[tuple[str, ...], str, str, str, dict]] = {
    # 6401: waterproof, rubber/plastics, not stitched
    "6401100000": (("waterproof",), "knee", "rubber", "rubber", M),
    "6401921000": (("waterproof",), "ankle", "rubber", "rubber", {}),
    "6401929000": (("waterproof",), "knee", "plastics", "plastics", {}),
    "6401990000": (("waterproof",), "over_knee", "rubber", "plastics", {}),
    # 6402
    "6402121000": (("sports",), "ankle", "plastics", "plastics", {"sports_kind": "ski"}),
    "6402129000": (("sports",), "ankle", "plastics", "rubber", {"sports_kind": "snowboard"}),
    "6402190000": (("sports",), "low", "plastics", "rubber", {"sports_kind": "other_sports"}),
    "6402200000": (("straps_plugged",), "low", "rubber", "rubber", {}),
    "6402911000": ((), "ankle", "plastics", "rubber", M),
    "6402919000": ((), "knee", "plastics", "rubber", {}),
    "6402990500": ((), "low", "plastics", "rubber", M),
    "6402991000": ((), "low", "rubber", "plastics", {}),
    "6402993100": (("vamp_straps", "high_heel"), "low", "plastics", "plastics", {}),
    "6402993900": (("vamp_openings",), "low", "plastics", "plastics", {}),
    "6402995000": (("indoor",), "low", "plastics", "plastics", {}),
    "6402999100": ((), "low", "plastics", "plastics", SMALL),
    "6402999300": ((), "low", "plastics", "plastics", UNI),
    "6402999600": ((), "low", "plastics", "plastics", {}),
    "6402999800": ((), "low", "plastics", "plastics", WOMEN),
    # 6403: leather upper
    "6403120000": (("sports",), "ankle", "leather", "rubber", {"sports_kind": "ski"}),
    "6403190000": (("sports",), "low", "leather", "leather", {"sports_kind": "other_sports"}),
    "6403200000": (("toe_strap",), "low", "leather", "leather", {}),
    "6403400000": ((), "ankle", "leather", "rubber", M),
    "6403510500": (("wood_base",), "ankle", "leather", "leather", {}),
    "6403511100": ((), "ankle", "leather", "leather", SMALL),
    "6403511500": ((), "ankle", "leather", "leather", {}),
    "6403511900": ((), "ankle", "leather", "leather", WOMEN),
    "6403519100": ((), "knee", "leather", "leather", SMALL),
    "6403519500": ((), "knee", "leather", "leather", {}),
    "6403519900": ((), "over_knee", "leather", "leather", WOMEN),
    "6403590500": (("wood_base",), "low", "leather", "leather", {}),
    "6403591100": (("vamp_straps", "high_heel"), "low", "leather", "leather", {}),
    "6403593100": (("vamp_openings",), "low", "leather", "leather", SMALL),
    "6403593500": (("vamp_openings",), "low", "leather", "leather", {}),
    "6403593900": (("vamp_straps",), "low", "leather", "leather", WOMEN),
    "6403595000": (("indoor",), "low", "leather", "leather", {}),
    "6403599100": ((), "low", "leather", "leather", SMALL),
    "6403599500": ((), "low", "leather", "leather", {}),
    "6403599900": ((), "low", "leather", "leather", WOMEN),
    "6403910500": (("wood_base",), "ankle", "leather", "rubber", {}),
    "6403911100": ((), "ankle", "leather", "rubber", SMALL),
    "6403911300": ((), "ankle", "leather", "rubber", UNI),
    "6403911600": ((), "ankle", "leather", "plastics", {}),
    "6403911800": ((), "ankle", "leather", "rubber", WOMEN),
    "6403919100": ((), "knee", "leather", "rubber", SMALL),
    "6403919300": ((), "knee", "leather", "rubber", UNI),
    "6403919600": ((), "knee", "leather", "composition_leather", {}),
    "6403919800": ((), "over_knee", "leather", "rubber", WOMEN),
    "6403990500": (("wood_base",), "low", "leather", "plastics", {}),
    "6403991100": (("vamp_straps", "high_heel"), "low", "leather", "rubber", {}),
    "6403993100": (("vamp_openings",), "low", "leather", "rubber", SMALL),
    "6403993300": (("vamp_openings",), "low", "leather", "rubber", UNI),
    "6403993600": (("vamp_straps",), "low", "leather", "rubber", {}),
    "6403993800": (("vamp_straps",), "low", "leather", "rubber", WOMEN),
    "6403995000": (("indoor",), "low", "leather", "rubber", {}),
    "6403999100": ((), "low", "leather", "rubber", SMALL),
    "6403999300": ((), "low", "leather", "rubber", UNI),
    "6403999600": ((), "low", "leather", "rubber", {}),
    "6403999800": ((), "low", "leather", "composition_leather", WOMEN),
    # 6404: textile upper
    "6404110000": (("sports",), "low", "textile", "rubber", {"sports_kind": "athletic"}),
    "6404191000": (("indoor",), "low", "textile", "plastics", {}),
    "6404199000": ((), "low", "textile", "rubber", {}),
    "6404201000": (("indoor",), "low", "textile", "leather", {}),
    "6404209000": ((), "low", "textile", "composition_leather", {}),
    # 6405: other
    "6405100001": ((), "low", "leather", "wood", {}),
    "6405100009": ((), "low", "composition_leather", "rubber", {}),
    "6405201000": ((), "low", "textile", "cork", {}),
    "6405209100": (("indoor",), "low", "textile", "textile", {}),
    "6405209900": ((), "low", "textile", "other", {}),
    "6405901000": ((), "low", "other", "leather", {}),
    "6405909000": ((), "low", "rubber", "textile", {}),
}


def run_case(code: str):
    present, height, upper, sole, extra = LEAF_CASES[code]
    return classify_tariff(crisp(*present, height=height), facts(upper, sole, **extra))


@pytest.mark.parametrize("code", sorted(LEAF_CASES))
def test_every_leaf_is_reached(code):
    decision = run_case(code)
    top = decision.candidates_10[0]
    assert top.code == code
    assert top.probability == pytest.approx(1.0)
    assert decision.candidates_6[0].code == code[:6]
    assert decision.candidates_4[0].code == code[:4]
    assert decision.status == "ok"
    assert decision.missing_facts == []
    assert decision.rationale["code"] == code
    assert decision.rationale["notes"]


def test_reached_leaves_equal_yaml_leaves():
    assert len(leaf_codes()) == SPEC_LEAF_COUNT
    assert load_tariff_rules().leaf_count == SPEC_LEAF_COUNT
    assert {run_case(c).top_code for c in LEAF_CASES} == set(leaf_codes())
    per_heading = {h: sum(c.startswith(h) for c in leaf_codes()) for h in ("6401", "6402", "6403", "6404", "6405")}
    assert per_heading == {"6401": 4, "6402": 15, "6403": 40, "6404": 5, "6405": 7}


@pytest.mark.parametrize("present,height,upper,sole,extra,hs6", [
    ((), "low", "composition_leather", "leather", {}, "640510"),  # Note 3(b): not leather
    ((), "low", "rubber", "leather", {}, "640590"),  # rubber upper on a leather sole: 6405
    ((), "low", "textile", "wood", {}, "640520"),
    (("toe_strap",), "low", "leather", "rubber", {}, "640399"),  # 6403 20 needs a leather sole
    (("sports",), "low", "leather", "rubber", {"sports_kind": "athletic"}, "640399"),  # not SN1 sports
    (("sports",), "low", "textile", "rubber", {"sports_kind": "other_sports"}, "640411"),
    (("waterproof",), "knee", "rubber", "rubber", {"waterproof_construction": False}, "640291"),
    ((), "knee", "rubber", "rubber", {"waterproof_construction": True}, "640192"),
    (("waterproof",), "knee", "rubber", "textile", {}, "640590"),  # 6401 needs a rubber/plastics sole
    (("straps_plugged",), "low", "leather", "rubber", {}, "640399"),  # 6402 20 only for rubber/plastic uppers
])
def test_hs_subheadings(present, height, upper, sole, extra, hs6):
    assert classify_tariff(crisp(*present, height=height), facts(upper, sole, **extra)).candidates_6[0].code == hs6


def test_measured_heel_overrides_attribute():
    probs = crisp("vamp_straps", "high_heel")
    assert classify_tariff(probs, facts("leather", "rubber", heel_sole_cm=2.5)).top_code == "6403993600"
    assert classify_tariff(crisp("vamp_straps"), facts("leather", "rubber", heel_sole_cm=3.5)).top_code == "6403991100"
    # "more than 3 cm": exactly 3 is not more
    assert classify_tariff(probs, facts("leather", "rubber", heel_sole_cm=3.0)).top_code == "6403993600"


def test_insole_boundary_is_24cm():
    probs = crisp()
    assert classify_tariff(probs, facts("leather", "rubber", insole_cm=24.0)).top_code == "6403999600"
    assert classify_tariff(probs, facts("leather", "rubber", insole_cm=23.9)).top_code == "6403999100"


def test_vamp_branch_before_indoor():
    assert classify_tariff(crisp("vamp_straps", "indoor"), facts("leather", "rubber")).top_code == "6403993600"


def test_not_footwear():
    d = classify_tariff(crisp(not_footwear=0.9), facts("leather", "rubber"))
    assert d.status == "needs_review"
    assert d.candidates_4 == d.candidates_6 == d.candidates_10 == []
    assert d.top_code is None
    assert any(n["id"] == "CH64_N1" and "Note 1" in n["text"] for n in d.rationale["notes"])
    json.dumps(d.to_dict())


def test_not_footwear_below_half_scales_probabilities():
    d = classify_tariff(crisp(not_footwear=0.3), facts("leather", "rubber"))
    assert d.candidates_10[0].code == "6403999600"
    assert d.candidates_10[0].probability == pytest.approx(0.7)
    assert d.status == "needs_review"


def test_rationale_lists_attributes_facts_and_notes():
    d = classify_tariff(crisp("vamp_straps", "high_heel"), facts("plastics", "plastics"))
    r = d.rationale
    assert r["code"] == "6402993100"
    assert r["attributes"]["vamp_straps"] == 1.0 and r["attributes"]["high_heel"] == 1.0
    assert r["facts"]["upper_material"] == "plastics"
    ids = {n["id"] for n in r["notes"]}
    assert {"H6402", "EN_VAMP", "EN_3CM"} <= ids
    assert [p["code"] for p in r["path"] if p["code"]] == ["6402", "640299", "6402993100"]
    json.dumps(d.to_dict())


def test_uncertain_attributes_split_between_leaves():
    probs = crisp()
    probs.update(vamp_straps=0.5, vamp_openings=0.5)
    d = classify_tariff(probs, facts("leather", "rubber"), top_k=100)
    got = {c.code: c.probability for c in d.candidates_10}
    assert got["6403993600"] == pytest.approx(0.75)  # vamp of straps or cut-out: 1 - 0.5 * 0.5
    assert got["6403999600"] == pytest.approx(0.25)


unit = st.floats(0.0, 1.0, allow_nan=False)
probs_st = st.fixed_dictionaries({k: unit for k in OUTPUT_KEYS})
facts_st = st.builds(
    DeclaredFacts,
    upper_material=st.sampled_from([None, "leather", "composition_leather", "rubber", "plastics", "textile", "other"]),
    sole_material=st.sampled_from([None, "rubber", "plastics", "leather", "wood", "textile"]),
    waterproof_construction=st.sampled_from([None, True, False]),
    metal_toecap=st.sampled_from([None, True, False]),
    insole_cm=st.sampled_from([None, 20.0, 26.0]),
    gender=st.sampled_from([None, "men", "women", "unisex"]),
)


@settings(max_examples=40, deadline=None)
@given(probs_st, facts_st)
def test_probability_properties(probs, f):
    d = classify_tariff(probs, f, top_k=100)
    if probs["not_footwear"] >= 0.5:
        assert d.candidates_10 == [] and d.status == "needs_review"
        return
    for level in (d.candidates_4, d.candidates_6, d.candidates_10):
        assert all(0.0 <= c.probability <= 1.0 for c in level)
        assert [c.probability for c in level] == sorted((c.probability for c in level), reverse=True)
    total = sum(c.probability for c in d.candidates_10)
    assert total <= 1.0 + 1e-9
    assert total == pytest.approx(1.0 - probs["not_footwear"], abs=1e-9)  # the tree covers every case
    assert sum(c.probability for c in d.candidates_6) == pytest.approx(total)
    assert sum(c.probability for c in d.candidates_4) == pytest.approx(total)
    assert {c.code for c in d.candidates_10} <= set(leaf_codes())
    json.dumps(d.to_dict())


@settings(max_examples=15, deadline=None)
@given(probs_st)
def test_stated_worlds_from_one_walk_equal_walks_with_the_values_fixed(probs):
    """The missing-facts search reads p(leaf | one or two facts stated) off one walk of the tree;
    each must equal the exact distribution of the tree walked again with those values fixed."""
    from shoeclass._tariff_rules import leaf_distribution, leaf_worlds

    rules = load_tariff_rules()
    dists = {n: v.distribution(probs, {}, None) for n, v in rules.variables.items()}
    names = ["upper_material", "sole_material", "metal_toecap", "insole", "gender"]
    worlds = leaf_worlds(rules, dists, pairs=names)
    stated = [[(n, v)] for n in names for v, p in dists[n].items() if 0 < p < 1]
    stated += [[(f, v), (g, w)] for i, f in enumerate(names) for g in names[i + 1:]
               for v, p in dists[f].items() if 0 < p < 1 for w, q in dists[g].items() if 0 < q < 1][::7]
    for facts in stated:
        exact = leaf_distribution(rules, {**dists, **{n: {v: 1.0} for n, v in facts}})
        got = dict(zip(worlds.codes, worlds.vector(*facts)))
        assert set(exact) <= set(got)
        assert all(got[c] == pytest.approx(exact.get(c, 0.0), abs=1e-9) for c in got), facts


def _p(decision, prefix: str) -> float:
    return sum(c.probability for c in decision.candidates_10 if c.code.startswith(prefix))


@settings(max_examples=25, deadline=None)
@given(probs_st, unit, unit)
def test_monotone_in_the_deciding_attribute(probs, a, b):
    lo, hi = sorted((a, b))
    probs = dict(probs, not_footwear=0.0)
    rubber = DeclaredFacts(upper_material="rubber", sole_material="rubber")
    assert _p(classify_tariff(dict(probs, waterproof=lo), rubber, top_k=100), "6401") <= \
        _p(classify_tariff(dict(probs, waterproof=hi), rubber, top_k=100), "6401") + 1e-12
    textile = DeclaredFacts(upper_material="textile", sole_material="rubber")
    assert _p(classify_tariff(dict(probs, sports=lo), textile, top_k=100), "640411") <= \
        _p(classify_tariff(dict(probs, sports=hi), textile, top_k=100), "640411") + 1e-12


@pytest.mark.parametrize("kwargs,field", [
    ({"upper_material": "wood"}, "upper_material"),
    ({"sole_material": "glass"}, "sole_material"),
    ({"gender": "robot"}, "gender"),
    ({"sports_kind": "chess"}, "sports_kind"),
    ({"metal_toecap": "yes"}, "metal_toecap"),
    ({"insole_cm": -1.0}, "insole_cm"),
    ({"heel_sole_cm": math.nan}, "heel_sole_cm"),
])
def test_bad_facts_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DeclaredFacts(**kwargs)


def test_bad_fact_message_lists_allowed_values():
    with pytest.raises(ValueError, match="leather"):
        DeclaredFacts(upper_material="wood")


def test_from_dict():
    f = DeclaredFacts.from_dict({"upper_material": "Composition leather", "metal_toecap": "no",
                                 "insole_cm": "25.5", "gender": None, "sole": "rubber"})
    assert f == DeclaredFacts(upper_material="composition_leather", metal_toecap=False, insole_cm=25.5,
                              sole_material="rubber")
    with pytest.raises(ValueError, match="twice"):
        DeclaredFacts.from_dict({"upper": "leather", "upper_material": "textile"})
    assert DeclaredFacts.from_dict(None) == DeclaredFacts()
    with pytest.raises(ValueError, match="colour"):
        DeclaredFacts.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="indoor"):
        DeclaredFacts.from_dict({"indoor": "maybe"})


def test_bad_probs_and_parameters_raise():
    with pytest.raises(ValueError, match="missing"):
        classify_tariff({"waterproof": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classify_tariff(dict(crisp(), sports=1.5))
    with pytest.raises(ValueError, match="top_k"):
        classify_tariff(crisp(), top_k=0)
    with pytest.raises(ValueError, match="review_below"):
        classify_tariff(crisp(), review_below=2.0)
    with pytest.raises(ValueError, match="priors"):
        classify_tariff(crisp(), priors={"upper_material": {"wood": 1.0}})




# ---- the findings of issue 17, one test each -----------------------------------------------------
def test_undeclared_toecap_is_asked_for():
    """A leather work boot with the toe-cap undeclared: never ok, the toe-cap is asked for."""
    f = DeclaredFacts(upper_material="leather", sole_material="rubber", insole_cm=28.0, gender="men")
    d = classify_tariff(crisp(height="ankle"), f)
    assert d.top_code == "6403911600" and d.candidates_10[0].probability == pytest.approx(0.98)
    assert d.status == "needs_review" and d.confidence == 0.0
    toe = d.missing_facts[0]
    assert toe["fact"] == "metal_toecap" and toe["source"] == "prior" and toe["codes"] == {"true": "6403400000"}
    assert any("metal_toecap" in r and "6403 40 000 0" in r for r in d.review_reasons)
    assert "rules file's prior" in d.rationale["assumed"]["metal_toecap"]
    assert "0.02" in d.rationale["assumed"]["metal_toecap"]


def test_nothing_declared_gives_no_confident_code():
    d = classify_tariff(crisp())
    assert d.status == "needs_review"
    assert d.candidates_10[0].probability < 0.5 and d.candidates_4[0].probability < 0.6
    assert {m["fact"] for m in d.missing_facts[:2]} == {"upper_material", "sole_material"}
    # a wellington photo: the attribute's definition (moulded rubber/plastics) carries the heading
    d = classify_tariff(crisp("waterproof", height="knee"))
    assert d.candidates_4[0].code == "6401" and d.candidates_4[0].probability > 0.95


def test_gender_prior_is_over_the_tariffs_categories():
    f = DeclaredFacts(upper_material="leather", sole_material="rubber", metal_toecap=False, insole_cm=27.0)
    got = {c.code: c.probability for c in classify_tariff(crisp(), f, top_k=100).candidates_10}
    for code in ("6403999300", "6403999600", "6403999800"):  # not identifiable / men / women
        assert got[code] == pytest.approx(1 / 3)


def test_heights_the_photo_cannot_show_are_even():
    probs = crisp()
    probs.update({k: 0.5 for k in HEIGHT_KEYS})
    d = classify_tariff(probs, facts("leather", "rubber"), top_k=100)
    assert _p(d, "640399") == pytest.approx(0.5)
    assert _p(d, "640391") == pytest.approx(0.5)
    assert d.missing_facts[0]["fact"] == "height" and d.status == "needs_review"


@pytest.mark.parametrize("declared,note", [
    ({"gender": "unisex", "sole_material": "leather"}, "ASSUME_NO_UNIDENT"),
    ({"gender": "children"}, "ASSUME_CHILDREN"),
])
def test_code_reached_through_an_assumption_is_flagged(declared, note):
    d = classify_tariff(crisp(), facts("leather", "rubber", **declared))
    assert d.candidates_10[0].probability == pytest.approx(1.0)
    assert d.status == "needs_review"
    assert [a["id"] for a in d.assumptions] == [note] and d.assumptions[0]["share"] == pytest.approx(1.0)
    assert any("assumption" in r for r in d.review_reasons)


def test_strappy_slipper_order_is_flagged():
    d = classify_tariff(crisp("vamp_straps", "indoor"), facts("leather", "rubber"))
    assert d.top_code == "6403993600" and d.status == "needs_review"
    assert [a["id"] for a in d.assumptions] == ["ORDER_VAMP_INDOOR"]


@pytest.mark.parametrize("attribute,fact", [("straps_plugged", "straps_plugged"), ("toe_strap", "toe_strap"),
                                            ("vamp_straps", "vamp_straps"), ("vamp_openings", "vamp_openings")])
def test_uncertain_visual_fact_is_asked_and_declarable(attribute, fact):
    upper, sole = ("rubber", "rubber") if attribute == "straps_plugged" else ("leather", "leather")
    probs = dict(crisp(), **{attribute: 0.5})
    d = classify_tariff(probs, facts(upper, sole))
    assert d.status == "needs_review" and d.missing_facts and d.missing_facts[0]["fact"] == fact
    value = True
    d = classify_tariff(probs, facts(upper, sole, **{fact: value}))
    assert d.status == "ok" and d.missing_facts == []


def test_rare_attribute_the_model_is_unsure_of_is_asked():
    """An indoor slipper at p = 0.3 is not thresholded away: the textile slipper leaf is a candidate
    and indoor is asked for."""
    d = classify_tariff(dict(crisp(), indoor=0.3), facts("textile", "rubber"), top_k=100)
    assert {c.code: round(c.probability, 6) for c in d.candidates_10}["6404191000"] == pytest.approx(0.3)
    assert d.status == "needs_review" and d.missing_facts[0]["fact"] == "indoor"


def test_every_missing_fact_listed_and_ranked():
    f = DeclaredFacts(upper_material="leather", sole_material="rubber")
    d = classify_tariff(crisp(), f)
    names = [m["fact"] for m in d.missing_facts]
    assert set(names) == {"metal_toecap", "insole_cm", "gender"}
    moves = [m["moves"] for m in d.missing_facts]
    assert moves == sorted(moves, reverse=True) and names[-1] == "metal_toecap"


@settings(max_examples=40, deadline=None)
@given(probs_st, facts_st)
def test_ok_means_nothing_left_to_ask(probs, f):
    d = classify_tariff(probs, f)
    if d.status == "ok":
        assert d.missing_facts == [] and d.review_reasons == [] and d.assumptions == []
        assert d.confidence >= 0.9
    else:
        assert d.review_reasons
    assert d.rules["id"] == "tnved-eaeu-ch64" and d.rules["version"]


def test_classify_code_matches_the_item_json():
    from shoeclass import classify_code

    probs = crisp("vamp_straps", height="low")
    got = classify_code(probs, {"upper": "leather", "sole": "rubber", "metal_toecap": "no", "insole_cm": 27,
                                "gender": "women"})
    want = classify_tariff(probs, facts("leather", "rubber", gender="women")).to_dict()
    assert got == want and got["candidates_10"][0]["code"] == "6403993800"
    json.dumps(got)
    # a per-item material prior (e.g. from the photos) replaces the rules file's prior
    got = classify_code(probs, {"sole": "rubber", "metal_toecap": False, "insole_cm": 27, "gender": "women"},
                        priors={"upper_material": {"leather": 0.9, "textile": 0.1}})
    assert got["candidates_4"][0] == {"code": "6403", "probability": pytest.approx(0.9), "text": got["candidates_4"][0]["text"]}
    assert got["missing_facts"][0]["fact"] == "upper_material" and got["missing_facts"][0]["source"] == "given"


def _copy_rules(tmp_path, edit) -> str:
    text = load_tariff_rules().path.read_text(encoding="utf-8")
    new = edit(text)
    assert new != text
    path = tmp_path / "rules.yaml"
    path.write_text(new, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("edit,key", [
    (lambda t: t.replace("attribute: waterproof\n", "atribute: waterproof\n", 1), "'atribute'"),
    (lambda t: t.replace("{value: lt24}", "{value: lt24, lt: 24.0}", 1), "'lt'"),
    (lambda t: t.replace('when: {insole: lt24}', 'when: {insole: {lt: 24}}', 1), "lt"),
    (lambda t: t.replace("when: {metal_toecap: true}", "when: {metal_toecap: true, colour: red}", 1), "'colour'"),
    (lambda t: t.replace("    rules: [H6401,", "    rule: [H6401,", 1), "'rule'"),
    (lambda t: t.replace("leaf_count: 71", "leaf_count: 70", 1), "leaf_count"),
    (lambda t: t.replace("rules: [EN_3CM]", "rules: [EN_4CM]", 1), "EN_4CM"),
])
def test_rules_file_is_checked(tmp_path, edit, key):
    path = _copy_rules(tmp_path, edit)
    with pytest.raises(RulesError, match=key) as err:
        classify_tariff(crisp(), rules_path=path)
    assert path in str(err.value)  # the file is named
    assert "tree[" in str(err.value) or "variables." in str(err.value) or "leaf_count" in str(err.value)


def test_rules_id_and_version_in_every_result():
    for probs in (crisp(), crisp(not_footwear=0.9)):
        d = classify_tariff(probs, facts("leather", "rubber")).to_dict()
        assert d["rules"] == {"id": "tnved-eaeu-ch64", "version": "2022.2", "file": "tariff_ch64.yaml"}


def test_cli_has_a_flag_for_every_fact():
    from shoeclass.cli import get_args_parser
    from shoeclass.facts import FACTS

    argv = ["classify", "x.jpg"]
    for fact in FACTS:
        argv += [f"--{fact.name.replace('_', '-')}",
                 {"bool": "yes", "cm": "25", "choice": fact.choices[0] if fact.choices else ""}[fact.kind]]
    args = get_args_parser().parse_args(argv)
    declared = {f.name: getattr(args, f.name) for f in FACTS}
    assert set(DeclaredFacts.from_dict(declared).stated()) == {f.name for f in FACTS}
    assert get_args_parser().parse_args(["classify", "x.jpg", "--upper", "leather"]).upper_material == "leather"


# ------------------------------------------------------------------ rule-input calibration (issue 17)
def _synthetic(n: int = 4000, seed: int = 0):
    """Fused probabilities that over-state presence: true p = sigmoid(logit(p_model) - 2)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 3.0, size=(n, len(OUTPUT_KEYS)))
    probs = 1.0 / (1.0 + np.exp(-z))
    y = (rng.random(z.shape) < 1.0 / (1.0 + np.exp(-(z - 2.0)))).astype(float)
    return probs, y


def test_input_calibration_fits_the_over_stated_map_and_leaves_rare_outputs_alone():
    from shoeclass.tariff import fit_input_calibration

    probs, y = _synthetic()
    indoor = OUTPUT_KEYS.index("indoor")
    y[:, indoor] = 0.0
    y[:5, indoor] = 1.0  # 5 positives: too few to fit, the head stays as the model gives it
    cal = fit_input_calibration(probs, y, model_sha256="x" * 64, review_below=0.9)
    a, b = cal.maps["sports"]
    assert a == pytest.approx(1.0, abs=0.15) and b == pytest.approx(-2.0, abs=0.25)
    assert "indoor" not in cal.maps and cal.counts["indoor"][0] == 5
    # the height heads share one map: equal heads (a photo that cannot show it) stay equal, 50/50
    assert len({cal.maps[k] for k in HEIGHT_KEYS}) == 1
    flat = cal.apply({**crisp(), **dict.fromkeys(HEIGHT_KEYS, 0.5)})
    assert len({flat[k] for k in HEIGHT_KEYS}) == 1
    assert flat["indoor"] == 0.0 and flat["sports"] < 1e-4


def test_input_calibration_changes_review_not_the_rules():
    from shoeclass.tariff import InputCalibration

    cal = InputCalibration("ab" * 32, {"sports": (1.5, -7.5)}, review_below=0.83, fitted_on="test")
    probs = crisp("vamp_straps") | {"sports": 0.6}  # the head over-states sports (3 % on val)
    shoe = facts("textile", "rubber")
    raw = classify_tariff(probs, shoe)
    assert raw.status == "needs_review" and any("sports_kind" in r for r in raw.review_reasons)
    fixed = classify_tariff(probs, shoe, input_calibration=cal)
    assert fixed.status == "ok" and fixed.top_code == "6404199000"
    assert fixed.rules["input_calibration"] == "ab" * 6
    assert classify_tariff(probs, shoe, input_calibration=cal, review_below=0.9999).status == "needs_review"
    # crisp evidence is left crisp where the map is steep enough: a sure sports shoe stays sports
    sure = classify_tariff(crisp() | {"sports": 1.0}, shoe, input_calibration=cal)
    assert sure.top_code == "6404110000"


def test_input_calibration_file_round_trip_and_model_check(tmp_path):
    from shoeclass.tariff import InputCalibration, input_calibration_for

    cal = InputCalibration("cd" * 32, {"high_heel": (1.1, -1.3)}, 0.8, "val split, 3 photos", {"high_heel": (1, 2)})
    path = tmp_path / "inputs.json"
    cal.save(path)
    assert InputCalibration.load(path) == cal
    assert input_calibration_for("cd" * 32, path) == cal
    assert input_calibration_for("ef" * 32, path) is None  # fitted on another model: not applied
    assert input_calibration_for("cd" * 32, tmp_path / "missing.json") is None
    bad = json.loads(path.read_text()) | {"mapz": {}}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="mapz"):
        InputCalibration.load(path)
    with pytest.raises(ValueError, match="slope"):
        InputCalibration("cd" * 32, {"high_heel": (-1.0, 0.0)}, 0.8)
    with pytest.raises(ValueError, match="unknown outputs"):
        InputCalibration("cd" * 32, {"heel": (1.0, 0.0)}, 0.8)


def test_shipped_input_calibration_is_for_the_shipped_model_and_keeps_rare_heads():
    from shoeclass.assets import asset
    from shoeclass.tariff import INPUTS_PATH, InputCalibration

    cal = InputCalibration.load(INPUTS_PATH)
    card = json.loads(asset("weights", "default", "model.json").read_text())
    assert cal.model_sha256 == card["sha256"]
    assert "val" in cal.fitted_on and 0.5 <= cal.review_below <= 1.0
    for rare in ("indoor", "wood_base", "not_footwear"):  # < 10 validation positives: left as they are
        assert rare not in cal.maps
