"""How attribute errors become tariff-code errors, and how well review catches them.

Protocol (shared/spec/evaluation.md, "Tariff codes"): every by-eye photo of the split is an item
of one photo. For each fixed set of declared facts, the rules give the "true" code from the facts
and the photo's by-eye labels (0/1; a 0.5 label leaves the code undetermined where it decides, and
such items have no true code), and the model's code from the same facts and its predicted
attributes. The three fixed sets are the evaluation spec's material pairs, each with what a
declarant always knows and no photo shows (no metal toe-cap, insole 27 cm, men's); the fourth
declares every fact: the leather/rubber set plus each attribute the by-eye label decides.

Reported per set: the share of items that come back ``ok``, the 10-digit agreement among them
(the targets), agreement at 4, 6 and 10 digits over all items with a true code, and the
coverage/accuracy curve as the review threshold moves, and why the items under review are there
(which photo fact is uncertain, which assumption). Model outputs are computed once and cached
under .cache/ (benchmarks/_tariff_cache.py), so re-running after a rules change is cheap.

Rule-input calibration (shoeclass/_tariff_inputs.py): ``--split val --fit-inputs`` fits it on the
validation photos, reads its review threshold there and writes configs/tariff_inputs.json; it is
applied whenever it was fitted for the measured model, as ``Classifier`` applies it
(``--raw-inputs``: the model's probabilities as they are, with ``REVIEW_BELOW``). ``--bound`` prints what calibration fitted on the measured split itself
(every output, an optimistic bound, not a result) would allow at 0.97 agreement.

    PYTHONPATH=$PWD python benchmarks/tariff.py [--data ../shared/data] [--split test] [--model M] [--limit N]
        [--raw-inputs] [--bound] [--fit-inputs]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tariff_cache import by_eye_outputs  # noqa: E402

from shoeclass._tariff_rules import leaf_distribution  # noqa: E402
from shoeclass.api import Classifier  # noqa: E402
from shoeclass.attributes import HEIGHT_KEYS, OUTPUT_KEYS  # noqa: E402
from shoeclass.facts import DeclaredFacts  # noqa: E402
from shoeclass.labels import CATALOGUE_SOURCES  # noqa: E402
from shoeclass.tariff import (INPUTS_PATH, REVIEW_BELOW, InputCalibration, classify_tariff,  # noqa: E402
                              fit_input_calibration, input_calibration_for, load_tariff_rules)

GOAL_OK, GOAL_AGREE = 0.60, 0.97
KNOWN = {"metal_toecap": False, "insole_cm": 27.0, "gender": "men"}
FACT_SETS = {
    "leather upper + rubber sole": {"upper_material": "leather", "sole_material": "rubber", **KNOWN},
    "textile upper + rubber sole": {"upper_material": "textile", "sole_material": "rubber", **KNOWN},
    "plastics upper + plastics sole": {"upper_material": "plastics", "sole_material": "plastics", **KNOWN},
}
ALL_FACTS = "every fact declared"
# a by-eye label -> the declared fact; high_heel is declared as a measured height on its side of 3 cm
BOOL_FACTS = {"vamp_straps": "vamp_straps", "vamp_openings": "vamp_openings", "straps_plugged": "straps_plugged",
              "toe_strap": "toe_strap", "indoor": "indoor", "wood_base": "wood_base",
              "waterproof": "waterproof_construction"}
HEEL_CM = {1.0: 5.0, 0.0: 2.0}
GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)


def label_facts(y: np.ndarray) -> dict:
    """The facts a declarant who has seen the shoe states: every attribute the by-eye label decides."""
    lab = dict(zip(OUTPUT_KEYS, y))
    out = {fact: bool(lab[attr]) for attr, fact in BOOL_FACTS.items() if lab[attr] != 0.5}
    if lab["high_heel"] != 0.5:
        out["heel_sole_cm"] = HEEL_CM[lab["high_heel"]]
    if lab["sports"] == 0.0:
        out["sports_kind"] = "none"
    heights = [k for k in HEIGHT_KEYS if lab[k] == 1.0]
    if len(heights) == 1:
        out["height"] = heights[0][len("height_"):]
    return out


def true_code(rules, y: np.ndarray, facts: dict) -> str | None:
    """The code the rules give from the labels, or None where a 0.5 label leaves it open."""
    lab = dict(zip(OUTPUT_KEYS, map(float, y)))
    if lab["not_footwear"] != 0.0:
        return None
    stated = DeclaredFacts.from_dict(facts).stated()
    dists = {n: v.distribution(lab, stated) for n, v in rules.variables.items()}
    leaves = leaf_distribution(rules, dists)
    code, p = max(leaves.items(), key=lambda kv: kv[1])
    return code if p > 1.0 - 1e-9 else None


def reason_tags(d) -> set[str]:
    """Why an item is under review, as short tags: ``photos:<fact>`` (uncertain in the photo, decides
    the code), ``prior:<fact>``, ``assumption:<note>``, ``low top probability``, ``not footwear``."""
    if not d.candidates_10:
        return {"not footwear"}
    tags = {f"{m['source']}:{m['fact']}" for m in d.missing_facts}
    tags |= {f"assumption:{a['id']}" for a in d.assumptions}
    if not tags:
        tags.add("low top probability")
    return tags


def run_set(name: str, out: dict, rules, base: dict | None, review_below: float = REVIEW_BELOW,
            calibration: InputCalibration | None = None) -> dict:
    n = len(out["image"])
    conf, pred, truth, ok, asked_indoor = np.zeros(n), [], [], np.zeros(n, bool), np.zeros(n, bool)
    tags = []
    for i in range(n):
        facts = dict(base) if base is not None else {**FACT_SETS["leather upper + rubber sole"],
                                                     **label_facts(out["y"][i])}
        probs = dict(zip(OUTPUT_KEYS, map(float, out["fused"][i])))
        d = classify_tariff(probs, facts, atypical=tuple(out["atypical"][i]), review_below=review_below,
                            input_calibration=calibration)
        conf[i], ok[i] = d.confidence, d.status == "ok"
        pred.append(d.top_code)
        truth.append(true_code(rules, out["y"][i], facts))
        asked_indoor[i] = any(m["fact"] == "indoor" for m in d.missing_facts)
        tags.append(set() if ok[i] else reason_tags(d))
    known = np.array([t is not None for t in truth])
    agree = {k: np.array([p is not None and t is not None and p[:k] == t[:k] for p, t in zip(pred, truth)])
             for k in (4, 6, 10)}
    return {"name": name, "n": n, "source": out["source"], "conf": conf, "ok": ok, "known": known, "agree": agree, "pred": pred,
            "truth": truth, "asked_indoor": asked_indoor, "tags": tags, "review_below": review_below}


def best_share(r: dict, goal: float = GOAL_AGREE) -> tuple[float, float | None]:
    """The largest ok share whose agreement (items with a true code) is >= goal when items go
    through in order of confidence, and the confidence of the last one let through."""
    order = np.argsort(-r["conf"], kind="stable")
    a10, known = r["agree"][10][order], r["known"][order]
    hits, counted = np.cumsum(a10 & known), np.cumsum(known)
    good = np.nonzero((counted > 0) & (hits >= goal * np.maximum(counted, 1)))[0]
    if not len(good):
        return 0.0, None
    k = good[-1]
    return (k + 1) / len(order), float(r["conf"][order][k])


def print_reasons(r: dict) -> None:
    """Why the items under review are there; for those one fact away, how the others fare."""
    under = [t for t in r["tags"] if t]
    if not under:
        return
    count: dict[str, int] = {}
    for tags in under:
        for t in tags:
            count[t] = count.get(t, 0) + 1
    single = {}
    for tags in under:
        if len(tags) == 1:
            (t,) = tags
            single[t] = single.get(t, 0) + 1
    print(f"  why needs_review ({len(under)} items; an item can have several reasons): "
          + ", ".join(f"{t} {c} ({single.get(t, 0)} alone)" for t, c in sorted(count.items(), key=lambda kv: -kv[1])))


def report(r: dict) -> tuple[float, float]:
    ok, known, a10 = r["ok"], r["known"], r["agree"][10]
    ok_share = ok.mean()
    ok_known = ok & known
    acc = a10[ok_known].mean() if ok_known.any() else float("nan")
    print(f"\n## {r['name']}: {r['n']} items, {known.sum()} with a true code (the rest: a 0.5 label decides)")
    print(f"  agreement over all items with a true code: 4 digits {r['agree'][4][known].mean():.3f}, "
          f"6 digits {r['agree'][6][known].mean():.3f}, 10 digits {a10[known].mean():.3f}")
    print(f"  at review_below={r['review_below']}: ok {ok.sum()} ({ok_share:.3f}); 10-digit agreement among ok "
          f"items with a true code {acc:.4f} ({ok_known.sum()} items)")
    for kind, sel in (("catalogue", np.isin(r["source"], CATALOGUE_SOURCES)), ("worn", r["source"] == "worn"),
                      ("street", r["source"] == "street")):
        k_ok = ok & known & sel
        print(f"    {kind}: {sel.sum()} items, ok {ok[sel].mean() if sel.any() else float('nan'):.3f}, 10-digit "
              f"agreement among ok {a10[k_ok].mean() if k_ok.any() else float('nan'):.4f} ({k_ok.sum()} items)")
    print("  threshold  ok-share  agreement@10 (ok items with a true code)")
    for t in GRID:
        sel = (r["conf"] >= t) & known
        cov = (r["conf"] >= t).mean()
        print(f"  {t:9.2f}  {cov:8.3f}  {a10[sel].mean() if sel.any() else float('nan'):.4f}  ({sel.sum()})")
    share, thr = best_share(r)
    print(f"  largest ok share at agreement >= {GOAL_AGREE} with the threshold read on this split: {share:.3f}"
          + (f" (confidence >= {thr:.3f})" if thr is not None else ""))
    print_reasons(r)
    return ok_share, acc


def smallest_meeting(results: list[dict]) -> float | None:
    """The smallest threshold on a 0.01 grid at which every set's agreement among ok items is >= goal."""
    fine = np.round(np.arange(0.5, 0.995, 0.01), 2)
    meets = [t for t in fine if all(r["agree"][10][(r["conf"] >= t) & r["known"]].mean() >= GOAL_AGREE
                                    for r in results if ((r["conf"] >= t) & r["known"]).any())]
    return float(meets[0]) if meets else None


def print_bound(out: dict, rules, sha: str) -> None:
    """An optimistic bound: every output (rare ones too) calibrated on the measured split itself, the
    threshold read there too. Not a result: what better-calibrated inputs could give this model."""
    cal = fit_input_calibration(out["fused"], out["y"], model_sha256=sha, review_below=0.0, min_per_class=1)
    print("\n# bound (not a result): every output calibrated on this split itself, threshold read on it")
    for name, facts in [*FACT_SETS.items(), (ALL_FACTS, None)]:
        r = run_set(name, out, rules, facts, 0.0, cal)
        share, thr = best_share(r)
        print(f"  {name}: largest ok share at agreement >= {GOAL_AGREE}: {share:.3f}"
              + (f" (confidence >= {thr:.3f})" if thr is not None else "")
              + f"; items with a true code {r['known'].mean():.3f}; 10-digit agreement over them "
              f"{r['agree'][10][r['known']].mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=0, help="first N items only (development)")
    ap.add_argument("--raw-inputs", action="store_true",
                    help=f"do not apply the rule-input calibration of {INPUTS_PATH.name} (as Classifier does)")
    ap.add_argument("--fit-inputs", action="store_true",
                    help=f"(--split val only) fit the rule-input calibration and its threshold, write {INPUTS_PATH.name}")
    ap.add_argument("--bound", action="store_true",
                    help="also print the bound with every output calibrated on this split itself")
    args = ap.parse_args(argv)
    clf = Classifier(args.model)
    out = by_eye_outputs(args.data, args.split, clf)
    if args.limit:
        out = {k: v[: args.limit] for k, v in out.items()}
    rules = load_tariff_rules()
    sha = clf.meta["sha256"]
    t0 = time.perf_counter()
    if args.fit_inputs:
        if args.split != "val":
            ap.error("--fit-inputs reads the validation split only (--split val)")
        cal = fit_input_calibration(out["fused"], out["y"], model_sha256=sha, review_below=1.0,
                                    fitted_on=f"{args.split} split, {len(out['image'])} by-eye photos")
        trial = [run_set(name, out, rules, facts, 1.0, cal) for name, facts in FACT_SETS.items()]
        trial.append(run_set(ALL_FACTS, out, rules, None, 1.0, cal))
        cal = InputCalibration(cal.model_sha256, cal.maps, smallest_meeting(trial) or 1.0, cal.fitted_on, cal.counts)
        cal.save(INPUTS_PATH)
        print(f"wrote {INPUTS_PATH} (review_below {cal.review_below}); maps {dict(cal.maps)}")
    calibration = None if args.raw_inputs else input_calibration_for(sha)
    review_below = calibration.review_below if calibration is not None else REVIEW_BELOW
    print(f"# tariff codes on the {args.split} split's by-eye photos, one photo per item; model "
          f"{clf.path.name} ({sha[:12]}), rules {rules.id} {rules.version}; rule inputs "
          + (f"calibrated ({INPUTS_PATH.name}, {calibration.fitted_on})" if calibration else "as the model gives them"))
    results = [run_set(name, out, rules, facts, review_below, calibration) for name, facts in FACT_SETS.items()]
    results.append(run_set(ALL_FACTS, out, rules, None, review_below, calibration))
    lines = []
    for r in results:
        ok_share, acc = report(r)
        lines.append((f"ok share, {r['name']}", ok_share, GOAL_OK))
        lines.append((f"10-digit agreement among ok, {r['name']}", acc, GOAL_AGREE))
    meets = smallest_meeting(results)
    print(f"\nsmallest review_below at which every set's agreement among ok items is >= {GOAL_AGREE} on this "
          f"split: {meets if meets is not None else 'none'} (in use: {review_below}, read from --split val)")
    if args.bound:
        print_bound(out, rules, sha)
    textile = results[1]
    indoor = out["y"][:, OUTPUT_KEYS.index("indoor")] == 1.0
    if indoor.any():
        reached = np.array([p == "6404191000" for p in textile["pred"]])[indoor]
        print(f"\nrare output: {indoor.sum()} photos labelled indoor (textile/rubber set): top code 6404 19 10 "
              f"for {reached.sum()}, indoor asked for {textile['asked_indoor'][indoor].sum()}, "
              f"needs_review {(~textile['ok'][indoor]).sum()}")
    print(f"\n{len(results) * len(out['image'])} items classified in {time.perf_counter() - t0:.0f} s\n")
    for name, value, goal in lines:
        print(f"target {name}: {value:.4f} (goal {goal}) {'PASS' if value >= goal else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
