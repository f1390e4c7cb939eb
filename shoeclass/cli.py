"""The ``shoeclass`` command line: train, classify, classify-batch, evaluate (and the tools built on them).

Building the parser loads neither torch nor the model (``--help``, ``--version`` and bad
arguments answer at once); each command imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .assets import load_scraper

__all__ = ["main", "get_args_parser", "add_fact_arguments"]


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _yes_no(text: str) -> bool:
    if text.lower() in ("yes", "y", "true", "1"):
        return True
    if text.lower() in ("no", "n", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def add_fact_arguments(group) -> None:
    """One option per declared fact of ``shoeclass.facts.FACTS`` (``--upper-material`` and its alias
    ``--upper``); the values are checked by ``DeclaredFacts``."""
    from .facts import FACTS

    for fact in FACTS:
        flags = [f"--{fact.name.replace('_', '-')}"] + ([f"--{fact.alias}"] if fact.alias else [])
        kind = {"bool": _yes_no, "cm": float, "choice": str}[fact.kind]
        group.add_argument(*flags, dest=fact.name, type=kind, help=fact.describe(),
                           metavar={"bool": "yes/no", "cm": "CM", "choice": "VALUE"}[fact.kind])


def cmd_train(args: argparse.Namespace) -> int:
    from .training import is_ensemble_config, load_config, train, train_ensemble

    over = _overrides(args.set)
    for key in ("data", "out", "epochs"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.no_progress:
        over["progress"] = False
    from . import distributed

    if args.skip_bad:
        over["skip_bad"] = True
    distributed.setup()  # under torchrun: join the other ranks (a no-op on one process)
    if distributed.is_main():  # loss and validation score per epoch, from one rank
        logging.getLogger("shoeclass.training").setLevel(logging.INFO)
    try:
        folder = train_ensemble(args.config, over) if is_ensemble_config(args.config) else train(load_config(args.config, over))
        main_rank = distributed.is_main()
    finally:
        distributed.cleanup()
    if not main_rank:
        return 0
    meta = json.loads((folder / "model.json").read_text())
    summary = meta["metrics"].get("test", {}).get("all", {}).get("summary")
    print(f"model written to {folder}")
    if summary:
        from .metrics import json_safe

        print(json.dumps(json_safe(summary), indent=2))
    return 0


def cmd_fit_fusion(args: argparse.Namespace) -> int:
    from .fit_fusion import fit_fusion

    report = fit_fusion(args.model, args.data, split=args.split, min_labelled=args.min_labelled,
                        review_rate=args.review_rate, max_change=args.max_change)
    print(json.dumps(report, indent=1))
    print(f"decision layer of {args.model} rewritten (model.json)")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .facts import FACTS, DeclaredFacts

    declared = DeclaredFacts.from_dict(  # a bad fact is refused before the model loads
        {f.name: getattr(args, f.name) for f in FACTS if getattr(args, f.name) is not None})
    from .check import normalise_code

    code = normalise_code(args.code) if getattr(args, "code", None) else None  # refused before loading too
    from .api import classify_images

    logging.getLogger("shoeclass.api").setLevel(logging.ERROR)  # photo errors: printed once, below
    result = classify_images(args.photos, model=args.model, declared=declared, top_k=args.top_k,
                             bf16=False if args.fp32 else None, runtime=args.runtime, code=code)
    data = result.to_dict()
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for photo in data["photos"]:
            if photo["error"]:
                print(f"! {photo['error']}")  # the error names the photo
        if data["attributes"] is None:
            print("no photo could be read")
        else:
            print(f"status: {data['status']}")
            for key, p in data["attributes"].items():
                mark = "yes" if data["decisions"][key] else "no "
                print(f"  {key:18s} {mark}  p={p:.3f}")
            if data["cluster"]:
                c = data["cluster"]
                flag = f"  atypical: {', '.join(c['atypical_firing'])}" if c["wrong_cluster"] else ""
                print(f"cluster: {c['name']} (p={c['probability']:.2f}){flag}")
            for part, dist in (data["materials"] or {}).items():
                ranked = sorted(dist.items(), key=lambda kv: -kv[1])[:3]
                print(f"{part} material: " + ", ".join(f"{c} {p:.2f}" for c, p in ranked))
            check = data["check"]
            if check:
                verdict = "consistent" if check["consistent"] else "NOT consistent"
                print(f"declared code {check['code']}: {verdict} with the photos (p={check['p_consistent']:.3f})")
                for c in check["conflicts"]:
                    what = c.get("needs") or {"not": c.get("excludes")}
                    print(f"  conflict at {c['node']}: {what} p={c['probability']:.3f} ({c['source']})")
            tariff = data["tariff"]
            for cand in tariff["candidates_10"]:
                text = cand["text"] if len(cand["text"]) <= 80 else "…" + cand["text"][-79:]
                print(f"  {cand['code']}  p={cand['probability']:.3f}  {text}")
            print(f"tariff: {tariff['status']} (confidence {tariff['confidence']:.2f}; rules "
                  f"{tariff['rules']['id']} {tariff['rules']['version']})")
            if tariff["missing_facts"]:
                print("facts that would change the code: " + ", ".join(m["fact"] for m in tariff["missing_facts"]))
            for reason in tariff["review_reasons"]:
                print(f"  review: {reason}")
    return 0 if data["attributes"] is not None else 1


def cmd_classify_batch(args: argparse.Namespace) -> int:
    from . import distributed
    from .batch import classify_batch, read_items

    items = read_items(args.input, args.items)  # a bad list is refused before the model loads
    distributed.setup()
    try:
        counts = classify_batch(items, args.out, args.model, top_k=args.top_k, bf16=False if args.fp32 else None,
                                progress=not args.no_progress)
        if distributed.is_main():
            print(f"{counts['items']} items in {args.out}: {counts['skipped']} done before, "
                  f"{counts['items'] - counts['skipped']} classified now by {distributed.world_size()} process(es)")
    finally:
        distributed.cleanup()
    return 0


def cmd_fit_materials(args: argparse.Namespace) -> int:
    from .training.materials import fit_materials

    section = fit_materials(args.model, args.data, cache_dir=args.cache, progress=not args.no_progress,
                            max_train=args.max_train, balanced=not args.unbalanced, tail_epochs=args.tail_epochs)
    print(f"material heads written to {section['path']}")
    print(json.dumps(section["metrics"], indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, save_plots, to_markdown

    report = evaluate(args.data, args.model, args.split, progress=not args.no_progress, skip_bad=args.skip_bad)
    md = to_markdown(report)
    print(md)
    if args.json:
        from .metrics import json_safe

        clean = json_safe({k: v for k, v in report.items() if not k.startswith("_")})
        Path(args.json).write_text(json.dumps(clean, indent=2, allow_nan=False))
        print(f"metrics written to {args.json}")
    if args.plots:
        for p in save_plots(report, args.plots):
            print(f"plot written to {p}")
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    from .checkpoint import read_metadata
    from .hierarchy import AttributeClusters

    decision = read_metadata(args.model).get("decision") or {}
    if not decision.get("clusters"):
        print("this model has no attribute clusters")
        return 1
    print(AttributeClusters.from_dict(decision["clusters"]).describe())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .service import MB, serve  # fastapi and the model only when serving

    serve(args.host, args.port, args.model, header_timeout=args.header_timeout, max_photos=args.max_photos,
          max_photo_bytes=int(args.max_photo_mb * MB), max_request_bytes=int(args.max_request_mb * MB),
          body_timeout=args.body_timeout, request_timeout=args.request_timeout)
    return 0


def _item_options(p: argparse.ArgumentParser, facts_title: str) -> None:
    """The photos of one item and how to classify them (``classify`` and ``check``)."""
    p.add_argument("photos", nargs="+", help="photo files of one item")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print the full JSON result")
    p.add_argument("--fp32", action="store_true", help="never use bf16")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="what runs the network (default auto: the fastest installed)")
    add_fact_arguments(p.add_argument_group(f"{facts_title} (all optional; shoeclass/facts.py)"))
    p.add_argument("--top-k", type=_positive_int, default=5, help="tariff candidates per level")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_serve_parser(sub: argparse._SubParsersAction, **kw) -> argparse.ArgumentParser:
    """``shoeclass serve [--host 127.0.0.1] [--port 8080] [--model PATH]`` (docs/service.md)."""
    p = sub.add_parser("serve", help="serve the HTTP JSON API (docs/service.md)", **kw)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--max-photos", type=_positive_int, default=12, help="photos per item")
    p.add_argument("--max-photo-mb", type=float, default=10, help="MB per photo")
    p.add_argument("--max-request-mb", type=float, default=50, help="MB per request")
    p.add_argument("--header-timeout", type=float, default=10, help="s to send the request headers (and keep-alive)")
    p.add_argument("--body-timeout", type=float, default=10, help="s the body may stall")
    p.add_argument("--request-timeout", type=float, default=120, help="s per request in all")
    p.set_defaults(func=cmd_serve)
    return p


class _SubParsers(argparse._SubParsersAction):
    """Subcommands that accept the common options (``-v``) after their name too."""

    common: argparse.ArgumentParser

    def add_parser(self, name: str, **kw):  # type: ignore[override]
        kw["parents"] = [*kw.get("parents", ()), self.common]
        return super().add_parser(name, **kw)


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import export_onnx

    net, _ = load_checkpoint(args.model)
    print(f"ONNX graph written to {export_onnx(net, args.out)}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .training.quantize import quantize_model

    section = quantize_model(args.model, args.data, photos=args.photos, split=args.split)
    print(f"int8 graph written to {Path(args.model) / section['file']} (calibrated on {section['calibration']['photos']} "
          f"{args.split} photos); OpenVINO runs it from now on")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoeclass", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"shoeclass {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand without -v leaves the value set before it
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress")
    parser.register("action", "parsers", _SubParsers)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.common = common

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="configs/<name>.yaml")
    p.add_argument("--data", help="dataset folder with labels.csv (overrides the config)")
    p.add_argument("--out", help="model folder to write (overrides the config)")
    p.add_argument("--epochs", type=int, help="overrides the config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other overrides, e.g. model.hidden=512")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out photos that cannot be decoded (each logged with its labels.csv line) "
                        "instead of stopping at the first; costs one decoding pass")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="classify the photos of one item")
    _item_options(p, "declared facts")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("classify-batch", help="classify a folder or a list of items into a JSON-lines file; "
                       "resumable, split across ranks under torchrun")
    p.add_argument("--input", required=True, metavar="LIST_OR_DIR",
                   help="a folder (one item per photo or per subfolder; its labels.csv if it has one) or a list "
                        "(.csv with an image column, or one photo path per line)")
    p.add_argument("--out", required=True, help="JSON-lines file, one line per item (items already in it are skipped)")
    p.add_argument("--items", metavar="COLUMN", help="CSV column whose equal values form one item (e.g. item)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="tariff candidates per level")
    p.add_argument("--fp32", action="store_true", help="never use bf16")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_classify_batch)

    p = sub.add_parser("check", help="check a declared 10-digit code against the photos of one item")
    p.add_argument("--code", required=True, help="the declared TN VED code, e.g. 6404199000")
    _item_options(p, "other declared facts")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("fit-materials", help="fit the upper / sole material heads of a model folder on "
                                             "the text-labelled photos of a dataset")
    p.add_argument("--model", help="model folder to add the heads to (default: the shipped model)")
    p.add_argument("--data", required=True, help="dataset folder with labels.csv and texts.csv")
    p.add_argument("--cache", default=".cache/materials", help="photo embedding cache folder")
    p.add_argument("--max-train", type=int, help="fit on at most this many train photos, those already cached first (CPU budget)")
    p.add_argument("--unbalanced", action="store_true",
                   help="weigh classes as often as the texts name them (default: equally)")
    p.add_argument("--tail-epochs", type=int, default=15,
                   help="an ensemble's material tail: epochs to tune it first (then its int8 graph is made again); "
                        "0 keeps the model's tail as it is (default 15)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fit_materials)

    p = sub.add_parser("evaluate", help="measure a model on a labels.csv folder")
    p.add_argument("--data", required=True, help="dataset folder with labels.csv")
    p.add_argument("--split", default="test", help="train / val / test / all")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out photos that cannot be decoded (each logged with its labels.csv line) "
                        "instead of stopping at the first; costs one decoding pass")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("fit-fusion", help="refit the fusion and item checks on real multi-photo items")
    p.add_argument("--model", required=True, help="model folder whose model.json is rewritten")
    p.add_argument("--data", required=True, help="dataset folder with labels.csv")
    p.add_argument("--split", default="val", help="split whose multi-photo items are used")
    p.add_argument("--min-labelled", type=int, default=10, help="fewest labelled items to refit an output's rho")
    p.add_argument("--review-rate", type=float, default=0.03, help="share of real items the different-products check may flag")
    p.add_argument("--max-change", type=float, default=0.005, help="share of item decisions a sole-only crop may change")
    p.set_defaults(func=cmd_fit_fusion)
    p = sub.add_parser("clusters", help="print the attribute clusters a model found and gates on")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.set_defaults(func=cmd_clusters)

    p = sub.add_parser("export", help="write a model folder as one ONNX graph (ONNX Runtime, OpenVINO)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("quantize", help="write the int8 graph of a model folder, calibrated on labelled photos "
                                        "(OpenVINO runs it by default)")
    p.add_argument("--model", required=True, help="model folder whose card is rewritten")
    p.add_argument("--data", required=True, help="dataset folder with labels.csv")
    p.add_argument("--split", default="val", help="split whose photos calibrate the activation ranges")
    p.add_argument("--photos", type=_positive_int, default=512, help="photos drawn from the split")
    p.set_defaults(func=cmd_quantize)

    add_serve_parser(sub)
    load_scraper("cli").add_parsers(sub)  # scrape, import-folder, fetch
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if args.verbose and main_rank else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"shoeclass {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
