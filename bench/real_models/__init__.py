"""Real-model corpus for the converter benchmark: pretrained models from pinned PyPI packages and in-repo
architectures, each with real inputs in its own preprocessing (see corpus.py and inputs.py)."""
