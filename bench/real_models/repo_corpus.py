"""In-repo architectures of the corpus: reference_models/corpus/<name>.onnx, with the data helper beside them
(edgefleet.reference_models.corpus_data); an entry appears here once its model file and data spec exist.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.reference_models import reference_model_dir

if TYPE_CHECKING:
    from bench.real_models.corpus import CorpusModel, OutputKind, Split

CORPUS = reference_model_dir() / "corpus"
# corpus_data's task names -> output kinds; frame-wise audio event probabilities have no task measure of
# their own, so they are tensors (SQNR/cosine).
TASK_KINDS: dict[str, OutputKind] = {
    "classification": "classification",
    "detection": "detection",
    "segmentation": "segmentation",
    "frame-events": "tensor",
}
TASKS = {
    "mobilenetv3_small": "MobileNetV3-Small (HardSwish, squeeze-excite), 10 photo classes",
    "efficientnet_lite0": "EfficientNet-lite0 (MBConv, ReLU6), 10 photo classes",
    "tiny_vit": "small ViT (LayerNorm, attention MatMul/Softmax, GELU), 10 photo classes",
    "yolo_style_det": "YOLOv8-style detector (C2f, SPPF, Split, Resize, DFL Softmax, decode tail)",
    "dbnet_seg": "DBNet-style segmenter (FPN, Resize, ConvTranspose), probability map",
    "audio_gru": "log-mel GRU frame-event model",
    "audio_conv1d": "log-mel 1-D convolution frame-event model",
}
PREPROCESSING = {
    "classification": "crops of scikit-image photos, RGB in [0, 1], the model's mean/std",
    "detection": "shapes pasted on photo crops, RGB in [0, 1] (/255, no mean/std)",
    "segmentation": "photo crops, RGB in [0, 1], ImageNet mean/std",
    "frame-events": "synthetic 16 kHz audio, 40-band log-mel, (log(mel + 1e-6) + 2) / 2.5",
}


def _from_helper(name: str, split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    """The helper's own sets: the first `n` samples of the split (labels `y` in classifier eval sets)."""
    from edgefleet.reference_models.corpus_data import corpus_split

    return corpus_split(name, split, n)


def data_version() -> str:
    """The helper's digest, so cached .npz files follow changes to it."""
    try:
        from edgefleet.reference_models.corpus_data import data_version as helper_version
    except ImportError:
        return ""
    return helper_version()


def entries() -> tuple[CorpusModel, ...]:
    from bench.real_models.corpus import CorpusModel

    try:
        from edgefleet.reference_models.corpus_data import MODELS
    except ImportError:  # the architecture corpus is not in this checkout
        return ()
    models = []
    for name, spec in MODELS.items():
        if not (CORPUS / f"{name}.onnx").is_file():
            continue  # not built (edgefleet.reference_models.make_corpus)
        models.append(
            CorpusModel(
                name=name,
                task=TASKS.get(name, spec.task),
                origin="repo",
                distribution="",
                module="",
                resource=f"corpus/{name}.onnx",  # inside edgefleet.reference_models
                input_shapes={spec.input_name: tuple(spec.input_shape)},
                output_kinds={spec.output_name: TASK_KINDS.get(spec.task, "tensor")},
                preprocessing=PREPROCESSING.get(spec.task, "as reference_models/corpus_data.py makes it"),
                preprocessing_source="reference_models/corpus_data.py (MODELS), make_corpus.py",
                make_samples=partial(_from_helper, name),
                license="Apache-2.0 (this repository)",
            )
        )
    return tuple(models)
