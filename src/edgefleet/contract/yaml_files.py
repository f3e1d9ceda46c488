"""Loading a YAML file into a pydantic model with one error line that names the file and every bad field."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgefleet.contract.errors import EdgefleetError

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_yaml_model(
    path: Path, model: type[ModelT], what: str, error: type[EdgefleetError] = EdgefleetError
) -> ModelT:
    """Parse `path` as `model`; `what` names the file in messages (e.g. "profile file")."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_field_problem(err, model) for err in exc.errors())
        raise error(f"{what} {path}: {problems}") from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, then what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _field_problem(err: Any, model: type[BaseModel]) -> str:
    """One validation error in plain words: unknown keys with the likely intended one, missing keys."""
    where = ".".join(str(p) for p in err["loc"]) or "(top)"
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), list(model.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close and len(err["loc"]) == 1 else ""
        return f"unknown key '{where}'{hint}"
    if err["type"] == "missing":
        return f"'{where}' is required"
    return f"{where}: {err['msg']}"
