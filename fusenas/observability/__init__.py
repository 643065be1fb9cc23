"""The observability floor: what a mounted volume shows of itself, read off the hot paths.

The layers below count for themselves (``statistics()`` records, trio's shape); this floor
reads them at one instant and renders them. It imports the floors below it and none above
(the control socket and the mount wiring, ``fusenas.cli``, use it).

``devices``
    ``TimedProvider``/``TimedDevice``: every call to a member or journal device timed and
    counted (``DeviceTimings``); slow calls logged.
``snapshot``
    ``Monitor``: every layer's counters read at one instant into a frozen ``Snapshot``.
``status``
    ``status_report``: a snapshot as the live status report (docs/status.md).
``health``
    ``HealthLog``: degraded array and journal backpressure warnings in the log.
``metrics``
    ``families``: a snapshot as Prometheus metric families (docs/metrics.md);
    ``MetricsServer``/``serve_metrics``: the HTTP endpoint; ``parse_address``.
"""

from fusenas.observability.devices import DeviceTimings, TimedDevice, TimedProvider
from fusenas.observability.health import HealthLog
from fusenas.observability.metrics import (
    FusenasCollector,
    MetricsServer,
    families,
    parse_address,
    serve_metrics,
)
from fusenas.observability.snapshot import Monitor, Snapshot
from fusenas.observability.status import status_report

__all__ = [
    "DeviceTimings",
    "FusenasCollector",
    "HealthLog",
    "MetricsServer",
    "Monitor",
    "Snapshot",
    "TimedDevice",
    "TimedProvider",
    "families",
    "parse_address",
    "serve_metrics",
    "status_report",
]
