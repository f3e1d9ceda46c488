"""Reference models shipped with edgefleet (made by train_digits_cnn.py and mobilenet_digits.py here;
no downloads)."""

from importlib import resources
from pathlib import Path


def reference_model_dir() -> Path:
    return Path(str(resources.files("edgefleet.reference_models")))
