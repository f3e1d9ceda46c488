"""What conversion steps share: the request, the state they build up step by step, and the Step protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.contract.manifest import ArtifactAlternative, ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import DeviceProfile, Precision
from edgefleet.contract.target_checks import TargetChecks
from edgefleet.converter.fidelity.kinds import OutputKind
from edgefleet.converter.inputs.images import ImagePreprocessing
from edgefleet.converter.shared_work import SharedWork
from edgefleet.converter.user_code import SPEC as USER_CODE_SPEC

if TYPE_CHECKING:
    import onnx

    from edgefleet.converter.compression.stats import CompressionReport
    from edgefleet.converter.report import ConversionReport
    from edgefleet.converter.steps.calibration import TensorSet
    from edgefleet.converter.steps.evaluate import OutputMetrics
    from edgefleet.converter.steps.layer_error import LayerError
    from edgefleet.converter.steps.load_onnx import ModelInfo
    from edgefleet.converter.steps.mixed_precision import BudgetOutcome

# How --prune ranks channels (see compression/prune.py; kept here so the request needs no torch import).
PruneCriterion = Literal["l1", "l2", "taylor", "bn-scale", "activation", "entropy"]
# How activation ranges are chosen from the calibration data (see steps/calibration_ranges.py).
CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class ConversionRequest(BaseModel):
    """The boundary between the CLI (or any caller) and the converter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path
    profile: str
    calib: Path | None = Field(
        default=None, description="calibration inputs; needed for int8 artifacts and compression"
    )
    eval: Path | None = None
    out: Path
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(default="1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    key: Path | None = None
    max_drop: float | None = Field(
        default=None, ge=0, description="accuracy budget in points; null: the profile's budget"
    )
    output_kinds: dict[str, OutputKind] = Field(
        default_factory=dict,
        description="output name -> kind, which picks the measure judging it ('*': every output not named); "
        "unnamed outputs: classification when one score vector per sample, else tensor (SQNR/cosine)",
    )
    min_sqnr: float | None = Field(
        default=None, description="floor in dB for outputs judged by SQNR; null: the precision's default"
    )
    allow_low_accuracy: bool = Field(
        default=False,
        description="convert even when the fp32 model scores no better than chance against the labels",
    )
    metric: str | None = Field(
        default=None,
        pattern=USER_CODE_SPEC.pattern,
        description="`package.module:function`: the user's own measure, which then judges the budget",
    )
    calib_method: CalibrationMethod | None = Field(
        default=None, description="activation range method; null: the converter's measured default"
    )
    report_dir: Path | None = Field(
        default=None, description="where report.json/report.html go; null: next to the bundle"
    )
    precision: Precision | None = Field(
        default=None, description="override the profile's precision (within what the target can run)"
    )
    input_shapes: dict[str, tuple[int | None, ...]] = Field(
        default_factory=dict, description="input name -> shape fixing its dynamic dims (None: stays dynamic)"
    )
    # Sources other than ONNX (converter/inputs/) and compression (converter/compression/).
    opset: int = Field(default=17, ge=13, le=20, description="ONNX opset for PyTorch/Keras model export")
    images: ImagePreprocessing = Field(
        default_factory=ImagePreprocessing, description="how image folders given as data become input tensors"
    )
    train: Path | None = Field(default=None, description="fine-tuning data of prune, 2:4, QAT (else calib)")
    prune: float | None = Field(default=None, gt=0, lt=1, description="share of channels to remove (PyTorch)")
    prune_criterion: PruneCriterion = Field(default="l2", description="how channels are ranked for --prune")
    prune_global: bool = Field(default=False, description="channels compete across layers (else uniform)")
    prune_max_layer_ratio: float = Field(
        default=0.9, gt=0, le=1, description="with global allocation: the most any one layer loses"
    )
    prune_protect: tuple[str, ...] = Field(default=(), description="module names never pruned")
    sparsity_reg: float | None = Field(
        default=None, gt=0, description="proximal L1 shrink per step of sparsity training before --prune"
    )
    sparsity_epochs: int = Field(default=10, ge=1, le=1000, description="epochs of sparsity training")
    sparsity_2_4: bool = Field(
        default=False,
        description="2:4 structured sparsity with fine-tuning (PyTorch; for TensorRT on Ampere+)",
    )
    prune_steps: int = Field(
        default=1, ge=1, le=20, description="prune in this many steps, distilling between"
    )
    distill_epochs: int = Field(default=60, ge=0, le=10000, description="recovery epochs after `prune`")
    low_rank: float | None = Field(default=None, gt=0, lt=1, description="SVD energy kept per FC/1x1 weight")
    distill_features: tuple[str, ...] = Field(
        default=(),
        description="layers whose outputs the student also learns (module names, or ('auto',)); empty: off",
    )
    qat_epochs: int | None = Field(
        default=None, ge=1, le=1000, description="quantization-aware training epochs (PyTorch; int8 profiles)"
    )
    low_rank_conv: bool = Field(default=False, description="--low-rank also on KxK convolutions (Tucker-2)")
    magnitude_prune: float | None = Field(default=None, gt=0, lt=1, description="share of weights set to 0")


@dataclass
class ConversionContext:
    """Mutable state handed from step to step; each step fills the fields it owns."""

    request: ConversionRequest
    profile: DeviceProfile
    work_dir: Path
    private_key: Any = None  # Ed25519PrivateKey, loaded early so a bad key fails before heavy work
    model: onnx.ModelProto | None = None
    model_info: ModelInfo | None = None
    calib: TensorSet | None = None
    eval: TensorSet | None = None
    keras_model: Any = None  # set by OnnxToKeras (a keras.Model in NHWC layout)
    artifact_path: Path | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    metrics: ConversionMetrics | None = None
    notes: list[str] = field(default_factory=list)  # things the user should know (printed in the summary)
    bundle_path: Path | None = None
    float_layers: list[str] = field(default_factory=list)  # ONNX nodes kept in float (mixed precision)
    calib_method: CalibrationMethod | None = None  # chosen by measured loss when the request leaves it open
    output_metrics: list[OutputMetrics] = field(default_factory=list)  # per model output (Evaluate)
    layer_errors: list[LayerError] = field(default_factory=list)  # fp32 vs artifact, per layer
    budget: BudgetOutcome | None = None  # the accuracy budget and how it was met (EnforceBudget)
    report: ConversionReport | None = None  # report.json's content, also stored in the manifest
    report_files: list[Path] = field(default_factory=list)  # report.json, report.html once written
    shared: SharedWork = field(default_factory=SharedWork)  # computed once per run (alternatives, profiles)
    step_seconds: dict[str, float] = field(default_factory=dict)  # filled by pipeline.run_steps
    detail: Any = None  # Callable[[str], None]: progress inside a long step (the CLI shows it)
    target_checks: TargetChecks | None = None  # set by the target check steps (Edge TPU, TensorRT, XNNPACK)
    alternatives: list[ArtifactAlternative] = field(default_factory=list)  # other model files in the bundle
    bundle_files: dict[str, Path] = field(default_factory=dict)  # extra bundle members -> files on disk
    torch_module: Any = None  # torch.nn.Module of a PyTorch source (replaced by the pruned one after --prune)
    train: TensorSet | None = None  # recovery-training data for --prune
    compression: list[CompressionReport] = field(default_factory=list)  # before/after of each method applied
    # activation ranges quantization-aware training learned, by ONNX tensor name (used instead of calibration)
    learned_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weight_sparsity: str | None = None  # "2:4" once Sparsify24 made the weights follow that pattern
    # What the user converted, for messages and reports: request.model is swapped for the fp32 ONNX file
    # in the work directory when the source is PyTorch/Keras or after a compression step.
    source_model: str = ""

    def __post_init__(self) -> None:
        if not self.source_model:
            self.source_model = str(self.request.model)

    def need(self, value: Any, what: str) -> Any:
        """A value an earlier step should have produced (a pipeline wiring bug otherwise)."""
        if value is None:
            raise RuntimeError(f"pipeline bug: {what} is not available yet")
        return value


class Step(Protocol):
    """One conversion step: `name` is shown in progress output; `run` reads and fills the context."""

    name: str

    def run(self, ctx: ConversionContext) -> None: ...
