"""dermbench: skin-tone fairness benchmark for skin-lesion classifiers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dermbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
