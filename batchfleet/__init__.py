"""batchfleet: the shared Redis batch state of the fleet (keys, scripts, store, settings).

The three services (``dispatcher``, ``workers``, ``aggregator``) import this package and never
each other.
"""

from importlib.metadata import PackageNotFoundError, version

from batchfleet.errors import BatchfleetError, ConfigError
from batchfleet.keys import Keys
from batchfleet.models import Outcome, UploadPayload
from batchfleet.settings import Settings, TopicConfig, load_settings
from batchfleet.store import BatchStore

__all__ = [
    "BatchStore",
    "BatchfleetError",
    "ConfigError",
    "Keys",
    "Outcome",
    "Settings",
    "TopicConfig",
    "UploadPayload",
    "load_settings",
]

try:
    __version__ = version("batchfleet")
except PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    __version__ = "0+unknown"
