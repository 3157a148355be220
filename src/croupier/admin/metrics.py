"""Prometheus metrics, read from the model at scrape time: nothing is counted for them on the
hot path. Names follow the Prometheus conventions (`_total` counters, base units, labels)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from croupier import __version__, data_plane_build
from croupier.model.state import DURATION_BOUNDS, Reason, Tally

if TYPE_CHECKING:
    from croupier.model.state import Host, Pool
    from croupier.proxy.listener import Listener


class Scraped(Protocol):
    """What a scrape reads of a running instance."""

    pools: dict[str, Pool]
    hosts: dict[str, Host]
    listeners: list[Listener]

    def access_log_counts(self) -> tuple[int, int]: ...

    def certificate_ends(self) -> list[tuple[str, str, float]]: ...

    def tls_failures(self) -> dict[str, int]: ...

    def fleet_metrics(self) -> dict[str, float] | None: ...


class InstanceCollector(Collector):
    def __init__(self, instance: Scraped) -> None:
        self.instance = instance

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "member", "host"]
        requests = CounterMetricFamily("croupier_member_requests",
                                       "Requests sent to a member (attempts).", labels=labels)
        failures = CounterMetricFamily("croupier_member_failures",
                                       "Attempts that failed (connect, reset, timeout).",
                                       labels=labels)
        retries = CounterMetricFamily("croupier_member_retries",
                                      "Retries this member took for another.", labels=labels)
        in_flight = GaugeMetricFamily("croupier_member_in_flight",
                                      "Requests (and tunnels) in flight.", labels=labels)
        up = GaugeMetricFamily("croupier_member_up", "1 if health checks say up (or unknown "
                               "counted as up).", labels=labels)
        eligible = GaugeMetricFamily("croupier_member_eligible",
                                     "1 if the member may take new requests.", labels=labels)
        ejected = GaugeMetricFamily("croupier_member_ejected",
                                    "1 while passively ejected.", labels=labels)
        admin = GaugeMetricFamily("croupier_member_admin_state",
                                  "1 for the member's admin state in force.",
                                  labels=[*labels, "state"])
        reason = GaugeMetricFamily("croupier_member_reason",
                                   "1 for why the member takes no new request (ready: it does).",
                                   labels=[*labels, "reason"])
        weight = GaugeMetricFamily("croupier_member_weight", "Balancing weight.", labels=labels)
        latency = SummaryMetricFamily("croupier_member_response_seconds",
                                      "Time from sending a request to its whole response.",
                                      labels=labels)
        for pool in self.instance.pools.values():
            for m in pool.members:
                lv = [pool.name, m.name, m.host.name]
                requests.add_metric(lv, m.requests)
                failures.add_metric(lv, m.failures)
                retries.add_metric(lv, m.retries)
                in_flight.add_metric(lv, m.in_flight)
                up.add_metric(lv, 1.0 if m.health == "up" or (
                    m.health == "unknown" and m.initial_up) else 0.0)
                why = m.why_not()
                eligible.add_metric(lv, 1.0 if why is Reason.READY else 0.0)
                for r in Reason:
                    reason.add_metric([*lv, r.value], 1.0 if why is r else 0.0)
                ejected.add_metric(lv, 1.0 if m.ejected else 0.0)
                for state in ("ready", "drain", "maint"):
                    admin.add_metric([*lv, state], 1.0 if m.admin_state == state else 0.0)
                weight.add_metric(lv, m.weight)
                latency.add_metric(lv, m.answered, m.latency_total)
        yield from (requests, failures, retries, in_flight, up, eligible, ejected, admin,
                    reason, weight, latency)
        yield from self._exchanges()
        hosts = GaugeMetricFamily("croupier_host_up", "1 if the host's check passes.",
                                  labels=["host"])
        for h in self.instance.hosts.values():
            hosts.add_metric([h.name], 1.0 if h.health != "down" else 0.0)
        yield hosts
        conns = GaugeMetricFamily("croupier_listener_connections",
                                  "Open client connections.", labels=["listener"])
        for lst in self.instance.listeners:
            conns.add_metric([lst.name], lst.open_connections)
        yield conns
        written, dropped = self.instance.access_log_counts()
        yield CounterMetricFamily("croupier_access_log_lines", "Access log lines written.",
                                  value=written)
        yield CounterMetricFamily("croupier_access_log_dropped",
                                  "Access log lines dropped: a pipe or socket that did not "
                                  "keep up (a file never drops).", value=dropped)
        ends = GaugeMetricFamily("croupier_tls_certificate_expiry_timestamp_seconds",
                                 "When each TLS listener's certificate expires (Unix time).",
                                 labels=["listener", "certificate"])
        for listener, certificate, end in self.instance.certificate_ends():
            ends.add_metric([listener, certificate], end)
        yield ends
        failed = CounterMetricFamily("croupier_tls_handshake_failures",
                                     "TLS handshakes that failed, by reason (OpenSSL's, or "
                                     "timeout, or plain HTTP sent to a TLS port).",
                                     labels=["reason"])
        for cause, n in sorted(self.instance.tls_failures().items()):
            failed.add_metric([cause], n)
        yield failed
        info = GaugeMetricFamily("croupier_build_info", "Always 1: the version, and whether "
                                 "the data plane is compiled (mypyc) or interpreted.",
                                 labels=["version", "data_plane"])
        info.add_metric([__version__, data_plane_build()], 1.0)
        yield info


    def _exchanges(self) -> Iterator[Metric]:
        """What the exchanges came to, by member (member="": answered with none), from
        the one place each is counted as it ends."""
        labels = ["pool", "member"]
        responses = CounterMetricFamily(
            "croupier_responses", "Exchanges by the class of the status sent to the client "
            '(code="none": the exchange ended before one was).', labels=[*labels, "code"])
        ends = CounterMetricFamily(
            "croupier_exchange_ends", "Exchanges that did not end normally, by termination "
            "code (the access log's: SH, SD, CD, sH ...).", labels=[*labels, "termination"])
        bytes_in = CounterMetricFamily("croupier_bytes_in", "Bytes from clients.", labels=labels)
        bytes_out = CounterMetricFamily("croupier_bytes_out", "Bytes to clients.",
                                        labels=labels)
        durations = HistogramMetricFamily(
            "croupier_exchange_duration_seconds",
            "From a request's head read to its exchange's end.", labels=labels)
        for pool in self.instance.pools.values():
            tallies: list[tuple[str, Tally]] = [(m.name, m.tally) for m in pool.members]
            tallies.append(("", pool.unserved))
            for name, t in tallies:
                lv = [pool.name, name]
                for i, n in enumerate(t.codes):
                    if n or i == 2 or i == 5:
                        responses.add_metric([*lv, f"{i}xx" if i else "none"], n)
                for code, n in sorted(t.ends.items()):
                    ends.add_metric([*lv, code], n)
                bytes_in.add_metric(lv, t.bytes_in)
                bytes_out.add_metric(lv, t.bytes_out)
                cumulative = 0
                buckets = []
                for bound, n in zip((*map(str, DURATION_BOUNDS), "+Inf"), t.buckets,
                                    strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                durations.add_metric(lv, buckets, t.duration_total)
        yield from (responses, ends, bytes_in, bytes_out, durations)
        yield from self._fleet()

    def _fleet(self) -> Iterator[Metric]:
        fleet = self.instance.fleet_metrics()
        if fleet is None:
            return
        for key, name, kind, doc in _FLEET:
            yield kind(name, doc, value=fleet[key])


_FLEET = (
    ("connected", "croupier_fleet_connected", GaugeMetricFamily,
     "1 while this instance reaches the fleet's etcd."),
    ("applied", "croupier_fleet_applied_revision", GaugeMetricFamily,
     "The revision of the fleet's shared state applied here."),
    ("lag", "croupier_fleet_watch_lag_seconds", GaugeMetricFamily,
     "Seconds since etcd last answered the watch (a change, or the check of a quiet watch "
     "every 2 s): grows while cut off."),
    ("skipped", "croupier_fleet_skipped_keys", GaugeMetricFamily,
     "Keys of the shared state that do not parse (skipped)."),
    ("resyncs", "croupier_fleet_resyncs", CounterMetricFamily,
     "Whole reads of the shared state after a compaction."),
)


def render_metrics(instance: Scraped) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(instance))
    return generate_latest(registry), CONTENT_TYPE_LATEST
