"""edgefleet: compress, convert and deploy neural networks to fleets of edge devices over MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
