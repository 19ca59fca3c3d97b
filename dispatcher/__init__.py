"""The dispatcher: Kafka messages -> batches -> one arq job per station, then the Kafka commit."""

from dispatcher.batching import plan_dispatch
from dispatcher.parsing import BadMessage, parse_stations
from dispatcher.service import Dispatcher

__all__ = ["BadMessage", "Dispatcher", "parse_stations", "plan_dispatch"]
