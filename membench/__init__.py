"""membench: what training methods really cost in memory and throughput."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("membench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
