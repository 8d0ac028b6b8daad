"""The public surface is small and explicit."""

from __future__ import annotations

import importlib

import pytest

import mpupload

MODULES = ["mpupload", "mpupload.errors", "mpupload.plan", "mpupload.stats", "mpupload.units", "mpupload.wire",
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


def test_lazy_names_are_the_defining_modules_objects() -> None:
    """Every public name resolves, to the very object its module defines, and is listed by dir()."""
    from mpupload import api, errors, options, storage, wire
    from mpupload.engine import cancel, dataset

    homes = {"upload_file": api, "upload_directory": api, "DatasetOptions": dataset, "DatasetResult": dataset,
             "CancelToken": cancel, "Event": wire, "Status": wire, "Snapshot": wire,
             "UploadOptions": options, "UploadResult": options, "ChecksumMode": options, "StoreConfig": storage}
    for name in mpupload.__all__:
        if name == "__version__":
            continue
        home = homes.get(name, errors)
        assert getattr(mpupload, name) is getattr(home, name), name
    assert set(mpupload.__all__) <= set(dir(mpupload))
    with pytest.raises(AttributeError, match="no_such_name"):
        mpupload.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from mpupload import no_such_name  # type: ignore[attr-defined]  # noqa: F401

