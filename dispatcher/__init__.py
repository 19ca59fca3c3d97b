"""The dispatcher: Kafka messages -> batches -> one arq job per station, then the Kafka commit."""

from batchfleet.dispatcher.batching import plan_dispatch
from batchfleet.dispatcher.parsing import BadMessage, parse_stations
from batchfleet.dispatcher.service import Dispatcher

__all__ = ["BadMessage", "Dispatcher", "parse_stations", "plan_dispatch"]
