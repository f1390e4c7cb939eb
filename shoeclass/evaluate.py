"""Evaluate a model on any labels.csv folder: metrics as JSON and Markdown, plots as PNG."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .api import Classifier
from .data import table_outputs
from .labels import LabelTable, read_labels
from .metrics import evaluate_probs, expected_calibration_error

__all__ = ["predict_table", "evaluate", "to_markdown", "save_plots"]

logger = logging.getLogger(__name__)


def predict_table(clf: Classifier, table: LabelTable, batch_size: int = 64, num_workers: int = 1,
                  progress: bool = True) -> np.ndarray:
    """(N, 14) probabilities of every photo of a table: what ``classify`` returns for each photo
    as an item of its own (``DecisionLayer.fuse``: one photo is its own answer)."""
    return table_outputs(lambda x: {"probs": clf.predict_tensors(x)["probs"].astype(np.float32)}, table, clf.preset,
                         batch_size, num_workers, progress)["probs"]


def evaluate(data: str | Path, model: str | Path | None = None, split: str = "test",
             progress: bool = True, skip_bad: bool = False) -> dict:
    """Metrics of ``model`` (None: the shipped default) on a split of the dataset at ``data``;
    ``skip_bad`` leaves out photos that cannot be decoded (else the first stops the run, named
    with its line)."""
    table = read_labels(data, skip_bad=skip_bad)
    part = table.subset(table.split == split) if split != "all" else table
    if len(part) == 0:
        raise ValueError(f"{data}: split {split!r} has no photos; splits present: {sorted(set(table.split))}")
    clf = Classifier(model)
    probs = predict_table(clf, part, progress=progress)
    report = evaluate_probs(probs, part, clf.thresholds)
    report["ece"] = expected_calibration_error(probs, part.y)
    report["model"] = clf.info
    report["data"] = {"path": str(data), "split": split, "photos": int(len(part))}
    report["_probs"] = probs
    report["_labels"] = part.y
    return report


def to_markdown(report: dict) -> str:
    lines = []
    for group in ("all", "catalogue", "worn"):
        if group not in report:
            continue
        s = report[group]["summary"]
        lines += [f"### {group}: mean accuracy {s['mean_accuracy']:.4f} (majority baseline "
                  f"{s['majority_mean_accuracy']:.4f}), mean balanced accuracy {s['mean_balanced_accuracy']:.4f}",
                  "", "| attribute | n | pos | accuracy | balanced acc. | precision | recall | F1 | ROC-AUC | ECE |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, m in report[group]["per_attribute"].items():
            if not m["n"]:
                lines.append(f"| {key} | 0 | 0 | | | | | | | |")
                continue
            star = "" if m["in_mean"] else " *"
            lines.append(f"| {key}{star} | {m['n']} | {m['n_pos']} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | "
                         f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['roc_auc']:.3f} | {m['ece']:.4f} |")
        lines.append("")
    lines.append("\\* fewer than 10 labels of a class: left out of the mean balanced accuracy.")
    return "\n".join(lines)


def save_plots(report: dict, folder: str | Path) -> list[Path]:
    """Per-attribute balanced accuracy bars and a reliability diagram, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = report["all"]["per_attribute"]
    keys = [k for k, m in per.items() if m["n"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(keys, [per[k]["balanced_accuracy"] for k in keys], color="tab:blue", label="balanced accuracy")
    ax.scatter(keys, [per[k]["accuracy"] for k in keys], color="black", zorder=3, label="accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.tick_params(axis="x", rotation=60)
    ax.legend(loc="lower left")
    ax.set_title("Per-attribute accuracy on the test split")
    fig.tight_layout()
    bars = folder / "per_attribute.png"
    fig.savefig(bars, dpi=100)
    plt.close(fig)

    probs, y = report["_probs"], report["_labels"]
    keep = y != 0.5
    p, t = probs[keep], y[keep]
    edges = np.linspace(0, 1, 16)
    idx = np.minimum((p * 15).astype(int), 14)
    centers = [(p[idx == b].mean(), t[idx == b].mean()) for b in range(15) if (idx == b).any()]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(*zip(*centers), "o-", color="tab:red")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability (ECE {report['ece']:.4f})")
    ax.set_xticks(edges[::3])
    fig.tight_layout()
    rel = folder / "reliability.png"
    fig.savefig(rel, dpi=100)
    plt.close(fig)
    return [bars, rel]
