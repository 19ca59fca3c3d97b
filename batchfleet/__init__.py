"""batchfleet: the shared Redis batch state of the fleet (keys, scripts, store, settings).

The three services (``dispatcher``, ``workers``, ``aggregator``) import this package and never
each other.
"""

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
__version__ = "0.1.0"
