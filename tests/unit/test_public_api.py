"""The public surface is small and explicit."""

from __future__ import annotations

import importlib

import pytest

import mpupload

MODULES = ["mpupload", "mpupload.errors", "mpupload.plan", "mpupload.stats", "mpupload.units", "mpupload.events",
           "mpupload.wire", "mpupload.checksums", "mpupload.options", "mpupload.storage", "mpupload.sinks",
           "mpupload.api"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, name
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr}"


def test_top_level_surface() -> None:
    assert set(mpupload.__all__) >= {"upload_file", "UploadOptions", "UploadResult", "StoreConfig", "CancelToken",
                                     "MpuploadError", "Cancelled"}
    assert mpupload.__version__.count(".") == 2


def test_core_imports_no_ui_or_http_framework() -> None:
    """The pure core and the engine never import a UI or web framework (checked on the source)."""
    import pathlib

    root = pathlib.Path(mpupload.__file__).parent
    core = [root / f for f in ("errors.py", "plan.py", "stats.py", "units.py", "events.py", "wire.py", "checksums.py")]
    core += sorted((root / "engine").glob("*.py"))
    for path in core:
        text = path.read_text()
        for banned in ("import enlighten", "import click", "import fastapi", "import requests", "from ..cli"):
            assert banned not in text, f"{path.name} imports {banned.split()[-1]}"
