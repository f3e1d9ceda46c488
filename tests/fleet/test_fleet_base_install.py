"""Every fleet command runs on the base install (`pip install edgefleet`): the third-party modules the fleet
modules import all come from the base dependencies (rich was only in the converter extra, and `edgefleet
status` died with ModuleNotFoundError on a host that only deploys). The demo converts, so it needs the
converter extra and is left out."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import edgefleet.fleet

NEEDS_CONVERTER = {"edgefleet.fleet.demo"}


def _base_closure() -> set[str]:
    """Distributions the base install brings: edgefleet's requirements without extras, recursively."""
    seen: set[str] = set()
    pending = ["edgefleet"]
    while pending:
        try:
            requires = distribution(pending.pop()).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in seen:
                seen.add(name)
                pending.append(name)
    return seen


def test_fleet_modules_import_only_what_the_base_install_brings() -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(edgefleet.fleet.__path__, "edgefleet.fleet.")
        if info.name not in NEEDS_CONVERTER
    ]
    assert "edgefleet.fleet.status" in modules and "edgefleet.fleet.deploy" in modules
    code = (
        "import importlib, json, sys\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"  # the interpreter's own (site hooks)
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} - before)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    owners = packages_distributions()
    third_party = {
        module: {canonicalize_name(d) for d in owners[module]}
        for module in loaded
        if module in owners and module not in sys.stdlib_module_names and module != "edgefleet"
    }
    base = _base_closure()
    outside = {module: dists for module, dists in third_party.items() if not dists & base}
    assert outside == {}, f"imported by fleet modules but not in the base install: {outside}"


@pytest.mark.parametrize("package", ["tensorflow", "torch", "onnx", "onnxruntime"])
def test_the_base_install_brings_no_toolchain(package: str) -> None:
    assert package not in _base_closure()
