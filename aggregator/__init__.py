"""The aggregator: completion and deadlines -> claim -> one upload per batch -> expire."""

from aggregator.payload import build_payload
from aggregator.service import Aggregator
from aggregator.uploaders import Uploader, make_uploader

__all__ = ["Aggregator", "Uploader", "build_payload", "make_uploader"]
