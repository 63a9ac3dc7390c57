"""The core (domain, routing, assembly, result building) imports no framework.

DESIGN.md's core rule: these packages hold the logic; pynetdicom, SQLAlchemy,
APScheduler, the web framework and torch are adapted at the edges. Each module of a
core package is imported in a fresh interpreter, so one that pulls a framework in is
named, not hidden behind another module that imported it first.
"""

import subprocess
import sys

import pytest

CORE_PACKAGES = ("cad_node.domain", "cad_node.routing", "cad_node.assembly", "cad_node.results")
FRAMEWORKS = (
    "torch",
    "monai",
    "sqlalchemy",
    "pynetdicom",
    "apscheduler",
    "fastapi",
    "starlette",
    "uvicorn",
)

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
frameworks = sys.argv[2].split(",")
found = {}
modules = pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")
for module in [sys.argv[1]] + [m.name for m in modules]:
    before = {f for f in frameworks if f in sys.modules}
    importlib.import_module(module)
    new = sorted(f for f in frameworks if f in sys.modules and f not in before)
    if new:
        found[module] = new
print(json.dumps(found))
"""


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_package_imports_no_framework(package: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, package, ",".join(FRAMEWORKS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert completed.stdout.strip() == "{}", f"{package}: modules importing a framework"
