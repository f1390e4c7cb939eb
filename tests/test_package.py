"""The package's shape: the inference core never loads training or heavy optional packages, no
module imports another that imports it back, and the command line answers without the model."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoeclass.assets import asset

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("albumentations", "cv2", "sklearn", "scrapy", "fastapi")


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (from another folder, the checkout importable)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent / "data", env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _loaded_after(statement: str) -> set[str]:
    return set(json.loads(_python(f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))")))


def test_classifier_loads_no_training_and_no_heavy_package():
    loaded = _loaded_after("from shoeclass import Classifier, classify_images")
    assert "shoeclass.api" in loaded and "torch" in loaded
    assert not [m for m in loaded if m.startswith("shoeclass.training")]
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_import_shoeclass_loads_no_torch():
    loaded = _loaded_after("import shoeclass")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", *HEAVY)]


def _imports(path: Path, package: str) -> set[str]:
    """Every module of ``package`` that the file imports, at module level or inside functions."""
    name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    if path.name == "__init__.py":
        name += ".__init__"
    here = name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` may name a module
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == package or m.startswith(package + ".")}


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``package`` is a folder of the repo)."""
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / package).rglob("*.py")}
    return {m: {i for i in _imports(p, package) if i in files} - {m} for m, p in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", ["shoeclass", "scraper"])
def test_no_import_cycle(package):
    graph = _graph(package)
    assert len(graph) > 5
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_core_never_imports_training():
    graph = _graph("shoeclass")
    assert any(m.startswith("shoeclass.training.") for m in graph)
    core = {m: deps for m, deps in graph.items() if not m.startswith("shoeclass.training") and m != "shoeclass.cli"}
    offenders = {m: sorted(d for d in deps if d.startswith("shoeclass.training")) for m, deps in core.items()}
    assert not {m: d for m, d in offenders.items() if d}


def test_assets_are_found():
    assert (asset("weights", "default") / "model.json").is_file()
    assert asset("configs", "tariff_ch64.yaml").is_file()
    assert asset("configs", "keywords.yaml").is_file()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = ("import json, sys\nfrom shoeclass.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as exc:\n    rc = exc.code\nprint(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO / "tests", env=env,
                          capture_output=True, text=True, timeout=120)


def _last(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_version_and_help_answer_without_torch():
    import shoeclass

    proc = _cli("--version")
    assert proc.stdout.startswith(f"shoeclass {shoeclass.__version__}")
    assert _last(proc) == {"rc": 0, "torch": False}
    proc = _cli("--help")
    assert "classify" in proc.stdout and "scrape" in proc.stdout and "serve" in proc.stdout
    assert _last(proc) == {"rc": 0, "torch": False}


def test_cli_refuses_bad_facts_before_loading_the_model():
    proc = _cli("classify", str(REPO / "examples" / "heels.jpg"), "--gender", "robot")
    assert _last(proc) == {"rc": 2, "torch": False}
    assert "gender" in proc.stderr and "robot" in proc.stderr
    proc = _cli("classify", str(REPO / "examples" / "heels.jpg"), "--top-k", "0")
    assert _last(proc) == {"rc": 2, "torch": False} and "--top-k" in proc.stderr


def test_verbose_is_accepted_after_the_subcommand():
    from shoeclass.cli import get_args_parser

    parser = get_args_parser()
    assert parser.parse_args(["classify", "a.jpg", "-v"]).verbose
    assert parser.parse_args(["-v", "classify", "a.jpg"]).verbose
    assert not parser.parse_args(["classify", "a.jpg"]).verbose
