"""Loading a YAML file into a pydantic model with one error line that names the file and every bad field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

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
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{what} {path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise error(f"{what} {path}: {problems}") from exc
