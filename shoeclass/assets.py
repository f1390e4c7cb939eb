"""Files shoeclass reads at run time (the default model, the tariff rules, the shipped configs)
and the scraper package, found the same way installed or in a source checkout.

They live at the top of the repository (``weights/``, ``configs/``), where users and training
scripts find them; the wheel carries them inside the package (``shoeclass/weights``,
``shoeclass/configs``: see ``[tool.setuptools.package-dir]`` in pyproject.toml), where
``importlib.resources`` finds them wherever shoeclass is installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

__all__ = ["asset", "load_scraper"]

_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root, in a source checkout


def asset(*parts: str) -> Path:
    """The path of a packaged file or folder, e.g. ``asset("configs", "tariff_ch64.yaml")``.

    Installed from a wheel: inside the installed package. Run from a source checkout (or an
    editable install): the repository's top-level folder of that name.
    """
    packaged = resources.files(__package__).joinpath(*parts)
    if packaged.is_file() or packaged.is_dir():
        return Path(str(packaged))
    return _CHECKOUT.joinpath(*parts)


def load_scraper(module: str = "") -> ModuleType:
    """The scraper package (importable as ``shoeclass_scraper``) or one of its modules, e.g. ``"cli"``.

    Installed from a wheel it is that package (``package-dir`` maps the repository's ``scraper/``
    folder to it); in a source checkout run without installing, the ``scraper/`` folder is
    loaded under that name, so both cases import the same modules under one name.
    """
    name = "shoeclass_scraper" + (f".{module}" if module else "")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != "shoeclass_scraper":
            raise
    folder = _CHECKOUT / "scraper"
    spec = importlib.util.spec_from_file_location("shoeclass_scraper", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("shoeclass_scraper is not installed and no scraper/ folder is beside shoeclass/",
                                  name="shoeclass_scraper")
    module = importlib.util.module_from_spec(spec)
    sys.modules["shoeclass_scraper"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["shoeclass_scraper"]
        raise
    return importlib.import_module(name)
