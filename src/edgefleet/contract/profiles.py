"""Device profiles: one validated YAML file per target describing what artifact it wants and how it runs it.

Profiles are looked up in the directories named by EDGEFLEET_PROFILES_PATH (os.pathsep-separated, searched
first) and then in the built-in `device_profiles/` folder, so a user adds a target by adding a file.
"""

from __future__ import annotations

import difflib
import os
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.contract.errors import ProfileError
from edgefleet.contract.yaml_files import load_yaml_model

PROFILES_PATH_ENV = "EDGEFLEET_PROFILES_PATH"

IoDtype = Literal["float32", "int8", "uint8"]


class ArtifactFormat(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"


class Precision(str, Enum):
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class Engine(str, Enum):
    LITERT = "litert"
    ONNXRUNTIME = "onnxruntime"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactSpec(_Strict):
    format: ArtifactFormat
    precision: Precision
    io_dtype: IoDtype = Field(description="dtype of the artifact's inputs and outputs")
    quant_flavor: Literal["ort", "tensorrt"] = Field(
        default="ort",
        description="INT8 ONNX only: 'ort' = asymmetric uint8 activations (fastest on CPUs); "
        "'tensorrt' = symmetric int8, zero-point 0, unquantized bias (TensorRT explicit quantization)",
    )
    allow_float_fallback: bool = Field(
        default=False,
        description="INT8 only: the target can run some layers in float, so the converter may keep the "
        "layers that lose the most accuracy in float to meet the accuracy budget (mixed precision); false "
        "(Edge TPU): every op must be int8, and a missed budget names the culprit layers instead",
    )
    batch: Literal[1] | None = Field(
        default=None,
        description="1: a dynamic batch axis is fixed to 1 in the artifact (static shapes, as TFLite and the "
        "Edge TPU need; tflite artifacts are always batch 1); null: an ONNX artifact keeps it dynamic",
    )


# Extra model files a profile can ask to have in its bundles next to the preferred artifact.
AlternativeKind = Literal["onnx-int8", "onnx-fp16"]


class RuntimeSpec(_Strict):
    engine: Engine
    threads: int = Field(default=1, ge=1, le=64)
    delegates: tuple[Literal["edgetpu", "xnnpack"], ...] = ()
    providers: tuple[str, ...] = Field(
        default=(), description="onnxruntime execution providers in order of preference"
    )


class DeviceProfile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    description: str
    artifact: ArtifactSpec
    runtime: RuntimeSpec
    memory_budget_mb: int = Field(gt=0)
    latency_budget_ms: float = Field(gt=0)
    max_accuracy_drop_points: float = Field(default=1.0, ge=0)
    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="probation: a newly swapped-in model whose failed or non-finite runs exceed this share "
        "is rolled back",
    )
    alternatives: tuple[AlternativeKind, ...] = Field(
        default=(),
        description="other artifacts the bundle carries next to the preferred one, e.g. [onnx-int8]",
    )
    refused_precisions: dict[Precision, str] = Field(
        default_factory=dict,
        description="precisions this target cannot run (`convert --precision`), each with the reason",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        fmt, precision = self.artifact.format, self.artifact.precision
        if precision in self.refused_precisions:
            raise ValueError(f"artifact precision {precision.value} is in refused_precisions")
        if len(set(self.alternatives)) != len(self.alternatives):
            raise ValueError("alternatives lists a kind twice")
        if f"{fmt.value}-{precision.value}" in self.alternatives:
            raise ValueError(f"alternatives repeats the artifact itself ({fmt.value}-{precision.value})")
        if fmt is ArtifactFormat.TFLITE:
            if precision is not Precision.INT8:
                raise ValueError("tflite artifacts are full-INT8 only (precision: int8)")
            if self.runtime.engine is not Engine.LITERT:
                raise ValueError("tflite artifacts run on engine 'litert'")
            if self.runtime.providers:
                raise ValueError("'providers' applies to onnxruntime only")
        if fmt is ArtifactFormat.ONNX:
            if self.runtime.engine is not Engine.ONNXRUNTIME:
                raise ValueError("onnx artifacts run on engine 'onnxruntime'")
            if self.runtime.delegates:
                raise ValueError("'delegates' applies to litert only")
            if precision is not Precision.INT8 and self.artifact.io_dtype != "float32":
                raise ValueError("fp16/fp32 onnx artifacts keep float32 inputs and outputs")
        if self.artifact.quant_flavor == "tensorrt" and not (
            fmt is ArtifactFormat.ONNX and precision is Precision.INT8
        ):
            raise ValueError("quant_flavor 'tensorrt' applies to int8 onnx artifacts only")
        return self


def _builtin_dir() -> Path:
    return Path(str(resources.files("edgefleet.device_profiles")))


def profile_dirs() -> list[Path]:
    """Directories searched for profiles, user directories first."""
    extra = [Path(p) for p in os.environ.get(PROFILES_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, _builtin_dir()]


def load_profile_file(path: Path) -> DeviceProfile:
    profile = load_yaml_model(path, DeviceProfile, "profile file", ProfileError)
    if profile.name != path.stem:
        raise ProfileError(
            f"profile file {path}: name '{profile.name}' must match the file name '{path.stem}'"
        )
    return profile


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def list_profiles() -> list[DeviceProfile]:
    return [load_profile_file(path) for _, path in sorted(_profile_files().items())]


def load_profile(name: str) -> DeviceProfile:
    files = _profile_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        close = difflib.get_close_matches(name, sorted(files), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ProfileError(
            f"unknown profile '{name}' ({hint}known: {known}); add a file {name}.yaml to one of: "
            + ", ".join(str(d) for d in profile_dirs())
        )
    return load_profile_file(files[name])
