"""User code named on the command line as `package.module:attribute` (a PyTorch model factory, a custom
fidelity measure): one pattern and one import rule for both."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

SPEC = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$", re.ASCII)


class UserCodeError(Exception):
    """What is wrong with the reference, worded to follow "<flag> <spec>: "."""


def split_spec(spec: str) -> tuple[str, str] | None:
    """(module, attribute) of a `package.module:attribute` reference, else None."""
    match = SPEC.match(spec)
    return (match.group("module"), match.group("attr")) if match else None


def import_callable(spec: str) -> Callable[..., Any]:
    """The callable `spec` names. The working directory is importable (as with `python -m`), so a file next
    to the user's data works without installing it."""
    parts = split_spec(spec)
    if parts is None:
        raise UserCodeError("not a 'package.module:name' reference")
    module_name, attr = parts
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserCodeError(
            f"cannot import module '{module_name}' ({type(exc).__name__}: {exc}); run from the directory "
            "that holds it or install it"
        ) from exc
    found = getattr(module, attr, None)
    if found is None or not callable(found):
        raise UserCodeError(f"module '{module_name}' has no callable '{attr}'")
    return found
