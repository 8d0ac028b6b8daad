"""What an import loads, checked in a fresh interpreter (``sys.modules`` there, not the source text here).

Each check runs in its own subprocess: this test process has long since imported everything, and a textual
search misses an import that goes through a package's ``__init__`` (how the engine came to load enlighten).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import mpupload.engine

ENGINE_MODULES = sorted(f"mpupload.engine.{m.name}" for m in pkgutil.iter_modules(mpupload.engine.__path__))

#: never loaded by ``import mpupload``: the engine, the S3 SDK, the terminal UI, HTTP clients, the server's
#: password hashing, the sinks
HEAVY = ["mpupload.engine", "mpupload.api", "mpupload.sinks", "mpupload.storage", "mpupload.client",
         "boto3", "botocore", "awscrt", "enlighten", "blessed", "requests", "urllib3", "argon2", "psutil", "dask",
         "distributed"]
#: the cluster extra: loaded only once a run is given --cluster
DASK = ["dask", "distributed"]
UI = ["mpupload.sinks", "enlighten", "blessed"]
FRAMEWORKS = ["requests", "fastapi", "starlette", "strawberry", "sqlalchemy", "click"]
CORE = ["errors", "plan", "stats", "units", "wire", "options", "checksums", "journal"]
NOT_IN_SERVER = ["mpupload.engine", "mpupload.api", "mpupload.sinks", "mpupload.cli", "mpupload.storage",
                 "boto3", "botocore", "awscrt", "enlighten"]


def loaded_after(code: str) -> set[str]:
    """The names in ``sys.modules`` of a fresh interpreter once it has run ``code``."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def present(modules: set[str], banned: list[str]) -> list[str]:
    """The banned packages (or any of their submodules) found in ``modules``."""
    return sorted({b for b in banned for m in modules if m == b or m.startswith(b + ".")})


def test_the_probe_sees_what_is_loaded() -> None:
    """The checks can fail: what these modules do load is seen."""
    assert present(loaded_after("import mpupload.engine.object_upload"), ["awscrt", "mpupload.engine"]) == [
        "awscrt", "mpupload.engine"]
    assert present(loaded_after("import mpupload.sinks.terminal"), UI) == sorted(UI)


def test_import_mpupload_loads_nothing_heavy() -> None:
    assert present(loaded_after("import mpupload"), HEAVY) == []


def test_a_public_name_loads_only_its_module() -> None:
    modules = loaded_after("from mpupload import UploadOptions, MpuploadError, Status")
    assert present(modules, HEAVY) == []
    assert {"mpupload.options", "mpupload.errors", "mpupload.wire"} <= modules


def test_no_engine_module_loads_the_sinks_or_a_ui() -> None:
    """Every module of the engine, all in one interpreter: what each loads is part of what all of them load."""
    assert len(ENGINE_MODULES) > 10
    code = "\n".join(f"import {module}" for module in ENGINE_MODULES)
    assert present(loaded_after(code), UI + FRAMEWORKS + ["mpupload.cli", "mpupload.client"]) == []


def test_the_pure_core_loads_no_engine_ui_or_framework() -> None:
    code = "import " + ", ".join(f"mpupload.{m}" for m in CORE)
    assert present(loaded_after(code), UI + FRAMEWORKS + ["mpupload.engine", "mpupload.cli", "boto3"]) == []


def test_the_library_entry_point_loads_no_ui() -> None:
    """``upload_file`` with sinks of the caller's choosing: the engine, but no bar, no HTTP client."""
    assert present(loaded_after("from mpupload import upload_file"), UI + ["requests", "mpupload.client"]) == []


def test_the_server_app_loads_no_engine() -> None:
    pytest.importorskip("fastapi")
    assert present(loaded_after("import mpupload.server.app"), NOT_IN_SERVER) == []


def test_the_server_auth_computes_no_hash_at_import() -> None:
    """argon2 may be imported, but no hash is made: the dummy hash is still unset and hashing never ran."""
    pytest.importorskip("argon2")
    code = textwrap.dedent("""
        import argon2
        calls = []
        real = argon2.PasswordHasher.hash
        argon2.PasswordHasher.hash = lambda self, *a, **k: calls.append(a) or real(self, *a, **k)
        import mpupload.server.auth as auth
        assert calls == [], calls
        assert auth._dummy is None
    """)
    loaded_after(code)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["upload", "--help"], ["list", "--help"]])
def test_the_cli_parses_without_loading_the_engine(argv: list[str]) -> None:
    """``mpupload --version`` and friends, run like the console script: no boto3, engine or sinks."""
    code = textwrap.dedent(f"""
        import sys
        from mpupload.cli.main import main
        try:
            main({argv!r})
        except SystemExit:
            pass
    """)
    modules = loaded_after(code)
    assert present(modules, ["boto3", "botocore", "mpupload.engine.object_upload", "mpupload.api", "enlighten",
                             "requests", "awscrt", "argon2", *DASK]) == []
    if argv in (["--version"], ["--help"]):  # no command module at all
        assert present(modules, ["mpupload.cli.upload", "mpupload.cli.cleanup", "mpupload.cli.listing",
                                 "mpupload.sinks", "mpupload.engine", "mpupload.storage"]) == []


def test_mpupload_version_in_a_subprocess_loads_no_boto3() -> None:
    """The real command, through ``python -m mpupload``: what it loads, as seen from inside."""
    code = textwrap.dedent("""
        import atexit, json, sys
        atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
        sys.argv = ["mpupload", "--version"]
        import runpy
        runpy.run_module("mpupload", run_name="__main__")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("mpupload "), done
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    assert present(set(json.loads(line[len("MODULES "):])), ["boto3", "botocore", "mpupload.engine", "enlighten"]) == []


def test_an_upload_without_a_server_or_a_bar_loads_no_http_client_or_ui() -> None:
    """``upload --no-report --progress plain`` (stopped by a missing file, before the store is asked): the
    engine is loaded, the API client and the bar are not."""
    code = textwrap.dedent("""
        from mpupload.cli.main import main
        assert main(["upload", "/nonexistent/file", "s3://bucket/key", "--no-report", "--progress", "plain"]) == 2
    """)
    modules = loaded_after(code)
    assert "mpupload.api" in modules
    assert present(modules, UI[1:] + ["requests", "mpupload.client.http", "mpupload.sinks.terminal", *DASK]) == []


def test_the_engine_loads_dask_only_for_a_cluster_run() -> None:
    """Every engine module (the cluster executor and its worker side among them) imports without Dask; a local
    run's whole set-up does not load it either."""
    assert "mpupload.engine.dask_executor" in ENGINE_MODULES and "mpupload.engine.dask_worker" in ENGINE_MODULES
    code = "\n".join(f"import {module}" for module in ENGINE_MODULES) + "\nimport mpupload.api, mpupload.cli.upload"
    assert present(loaded_after(code), DASK) == []
    assert present(loaded_after("import distributed"), DASK) == DASK  # the check can fail
