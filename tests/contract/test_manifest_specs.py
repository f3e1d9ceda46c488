"""A signed manifest can still say anything: tensor descriptions the agent cannot convert with are refused
when the manifest is read, with a reason, instead of failing on every request (found by fuzzing)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.contract.manifest import HealthReference, TensorSpec

GOOD: dict[str, Any] = {
    "name": "image",
    "dtype": "int8",
    "shape": [1, 8, 8, 1],
    "float_shape": [None, 1, 8, 8],
    "perm": [0, 2, 3, 1],
    "quantization": {"scale": 0.02, "zero_point": -3},
}


def test_a_consistent_spec_is_accepted() -> None:
    assert TensorSpec.model_validate(GOOD).perm == [0, 2, 3, 1]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"perm": [0, 0, 0, 0]}, "not a permutation"),
        ({"perm": [5, 6, 7, 8]}, "not a permutation"),
        ({"perm": [0, 1, 2]}, "not a permutation"),
        ({"float_shape": [None, 64]}, "of different ranks"),
        ({"shape": [-1, 8, 8, 1]}, "dimensions must be"),
        ({"shape": [10**20, 8, 8, 1]}, "dimensions must be"),
        ({"quantization": {"scale": 0.02, "zero_point": 10**30}}, "outside int8"),
        ({"quantization": {"scale": math.nan, "zero_point": 0}}, "finite number"),
        ({"dtype": "float32"}, "applies to integer tensors"),
    ],
)
def test_specs_the_agent_cannot_convert_with_are_refused(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        TensorSpec.model_validate({**GOOD, **change})


def test_a_nan_reference_threshold_is_refused() -> None:
    """NaN compares false with everything: the golden-output check could never fail."""
    with pytest.raises(ValidationError, match="finite number"):
        HealthReference(outputs="r.npz", min_sqnr_db=math.nan, host_runtime="test")
