"""The aggregator: completion and deadlines -> claim -> one upload per batch -> expire."""

from batchfleet.aggregator.payload import build_payload
from batchfleet.aggregator.service import Aggregator
from batchfleet.aggregator.uploaders import Uploader, make_uploader

__all__ = ["Aggregator", "Uploader", "build_payload", "make_uploader"]
