"""The ``dhtcart.verify`` package: its public API, the old import paths, and where it sits.

Verification is a tool *beside* the library: it may use the core (the store,
the errors, the backends' records), but nothing in the core imports it, so
the library never depends on its own test tool. Only the ``dhtcart`` command
(``cli.py``) registers ``dhtcart verify``, and the compatibility modules
``dhtcart.checker``, ``dhtcart.history`` and ``dhtcart.workload`` re-export
its names.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

import dhtcart
import dhtcart.verify
from tests.helpers import run_python

PACKAGE = Path(dhtcart.__file__).resolve().parent

EXPECTED = {
    # histories
    "HistoryRecorder", "HistoryWriter", "KeyValueStore", "encode_value", "merge_histories", "read_history",
    # the checker
    "ANOMALY_KINDS", "DEFAULT_MAX_STEPS", "MAX_CONFIGURATIONS", "Anomaly", "CheckReport", "Operation",
    "check_file", "check_history",
    # workloads and runs
    "DEFAULT_RATE", "MIX", "VerifyRun", "WorkloadStats", "draw_keys", "open_store", "run_workload", "verify_store",
    "OPERATIONS", "check_mix", "parse_mix",
    # the command
    "EXIT_BUSY", "EXIT_LINEARIZABLE", "EXIT_NOT_LINEARIZABLE", "EXIT_RUN_FAILED", "EXIT_USAGE",
    "add_verify_parser", "run_verify",
}  # fmt: skip

#: the old modules, and the names each must keep exporting
COMPAT = {
    "dhtcart.checker": {
        "ANOMALY_KINDS", "DEFAULT_MAX_STEPS", "MAX_CONFIGURATIONS", "Anomaly", "CheckReport", "Operation",
        "check_file", "check_history",
    },
    "dhtcart.history": {
        "HistoryRecorder", "HistoryWriter", "KeyValueStore", "encode_value", "merge_histories", "read_history",
    },
    "dhtcart.workload": {
        "DEFAULT_RATE", "MIX", "VerifyRun", "WorkloadStats", "draw_keys", "open_store", "run_workload",
        "verify_store",
    },
}  # fmt: skip

#: modules outside ``verify/`` that may import it: the face that registers the command, and the old paths
MAY_IMPORT_VERIFY = {"cli.py", "checker.py", "history.py", "workload.py"}
VERIFY_MODULES = ("dhtcart.verify", "dhtcart.checker", "dhtcart.history", "dhtcart.workload")


def test_all_lists_exactly_the_public_names() -> None:
    assert set(dhtcart.verify.__all__) == EXPECTED
    assert len(dhtcart.verify.__all__) == len(EXPECTED), "no duplicates"
    for name in EXPECTED:
        assert getattr(dhtcart.verify, name) is not None, name


def test_every_submodule_export_is_public_in_the_package() -> None:
    """What a module offers in its ``__all__`` is offered by the package too (the internals excepted)."""
    internal = {"dhtcart.verify.checker.parse", "dhtcart.verify.checker.rules", "dhtcart.verify.checker.search"}
    for path in sorted((PACKAGE / "verify").rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if name in internal or name == "dhtcart.verify.client":
            continue
        module = importlib.import_module(name)
        missing = set(getattr(module, "__all__", ())) - EXPECTED
        assert not missing, f"{name} exports {missing}, which dhtcart.verify does not"


@pytest.mark.parametrize("old", sorted(COMPAT))
def test_the_old_import_paths_give_the_same_objects(old: str) -> None:
    module = importlib.import_module(old)
    assert set(module.__all__) == COMPAT[old]
    for name in COMPAT[old]:
        assert getattr(module, name) is getattr(dhtcart.verify, name), f"{old}.{name}"
    assert module.__doc__ is not None and "dhtcart.verify" in module.__doc__, "says where the code lives"


def _imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions included), as absolute names.

    ``package`` is the package the file sits in (default: from its place under ``dhtcart/``),
    which relative imports start from.
    """
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_verify(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in VERIFY_MODULES)


def test_nothing_in_the_core_imports_the_verification_package() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "verify" or str(relative) in MAY_IMPORT_VERIFY:
            continue
        bad = sorted(m for m in _imported_modules(path) if _is_verify(m))
        if bad:
            offenders[str(relative)] = bad
    assert not offenders, f"the core imports the verification tool: {offenders}"


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The scan above notices an import inside a function, a plain ``import`` and a relative one."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "def f():\n    from dhtcart.verify import check_history\n"
        "import dhtcart.history\n"
        "from .checker import check_file\n"
        "from ..workload import run_workload\n"
    )
    seen = {m for m in _imported_modules(fake, "dhtcart.rebalance") if _is_verify(m)}
    assert seen == {
        "dhtcart.verify",
        "dhtcart.verify.check_history",
        "dhtcart.history",
        "dhtcart.workload",
        "dhtcart.workload.run_workload",
    }
    assert "dhtcart.rebalance.checker" in _imported_modules(fake, "dhtcart.rebalance")
    assert "dhtcart.checker" in _imported_modules(fake, "dhtcart")


def test_the_verification_package_imports_no_face() -> None:
    """It sits beside the library: the core is fine, the command line and the HTTP app are not."""
    for path in sorted((PACKAGE / "verify").rglob("*.py")):
        faces = sorted(m for m in _imported_modules(path) if m.startswith(("dhtcart.cli", "dhtcart.http")))
        assert not faces, f"{path.relative_to(PACKAGE)} imports {faces}"


_PROBE = """
import json, sys
import dhtcart, dhtcart.store, dhtcart.ring, dhtcart.backends, dhtcart.membership, dhtcart.rebalance
dhtcart.DHTServerStore(shards=2).close()
before = sorted(m for m in sys.modules if m.split(".")[:2] == ["dhtcart", "verify"])
import dhtcart.verify
after = sorted(m for m in sys.modules if m.split(".")[:2] == ["dhtcart", "verify"])
print(json.dumps([before, after]))
"""


def test_using_the_core_loads_no_verification_module() -> None:
    before, after = json.loads(run_python(_PROBE))
    assert before == []
    assert "dhtcart.verify.checker" in after and "dhtcart.verify.run" in after
    # the client process's module is only ever run as __main__ (python -m): were the package to
    # import it, runpy would warn that it is already in sys.modules before running it
    assert "dhtcart.verify.client" not in after
