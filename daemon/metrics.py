"""Prometheus metrics, opt-in (config key ``metrics_port``; bound to ``metrics_address``,
loopback by default). The request path only bumps plain counters (:class:`Counters`, a
bisect and a few additions per batch); everything else is read from the service when
Prometheus scrapes, by a collector over ``prometheus_client`` (the ``metrics`` extra)."""
from __future__ import annotations

import bisect
import logging
import threading
from typing import Dict, Optional

from governor import CAUSES

log = logging.getLogger("dnnscale.metrics")

BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Counters:
    """Cumulative figures since start, for the exporter (never reset)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.images = 0
        self.misses = 0
        self.causes: Dict[str, int] = {}     # governed runs over their limit, by cause (governor.CAUSES)
        self.energy_mj = 0.0
        self.buckets = [0] * (len(BUCKETS_S) + 1)
        self.latency_sum_s = 0.0
        self.latency_count = 0

    def observe(self, requests: int, images: int, latency_s: float, limit_ms: Optional[float],
                energy_mj: Optional[float]) -> None:
        with self.lock:
            self.requests += requests
            self.images += images
            self.buckets[bisect.bisect_left(BUCKETS_S, latency_s)] += requests
            self.latency_sum_s += latency_s * requests
            self.latency_count += requests
            if limit_ms is not None and latency_s * 1e3 / max(images, 1) > limit_ms:
                self.misses += requests
            if energy_mj is not None:
                self.energy_mj += energy_mj

    def miss(self, cause: str) -> None:
        with self.lock:
            self.causes[cause] = self.causes.get(cause, 0) + 1


def _collector(service):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class ServiceCollector:
        """Per model set (label ``model``): requests, images, latency, misses, energy, the
        configuration and the budget; for the board: errors, frequencies, temperatures."""

        def collect(self):
            with service.lock:
                sets = list(service.sets.values())
            fam = {
                "req": CounterMetricFamily("dnnscale_requests", "inference requests answered with a result",
                                           labels=["model"]),
                "img": CounterMetricFamily("dnnscale_images", "images inferred", labels=["model"]),
                "lat": HistogramMetricFamily("dnnscale_latency_seconds", "inference latency of a request (its batch)",
                                             labels=["model"]),
                "miss": CounterMetricFamily("dnnscale_deadline_misses", "requests over their latency limit",
                                            labels=["model"]),
                "cause": CounterMetricFamily("dnnscale_deadline_misses_by_cause",
                                             "runs over their latency limit, by cause (docs/governor.md)",
                                             labels=["model", "cause"]),
                "en": CounterMetricFamily("dnnscale_energy_millijoules", "metered energy of the inferences",
                                          labels=["model"]),
                "run": GaugeMetricFamily("dnnscale_longest_miss_run",
                                         "the most consecutive misses since the budget was set", labels=["model"]),
                "mam": GaugeMetricFamily("dnnscale_miss_after_miss_ratio",
                                         "misses among the runs right after a miss, since the budget was set",
                                         labels=["model"]),
                "cfg": GaugeMetricFamily("dnnscale_config_groups", "groups (level) in use, by target",
                                         labels=["model", "target"]),
                "bud": GaugeMetricFamily("dnnscale_budget", "the budget in force (absent: none)",
                                         labels=["model", "kind"]),
            }
            for s in sets:
                c, m = s.counters, [s.name]
                with c.lock:
                    req, img, miss, en = c.requests, c.images, c.misses, c.energy_mj
                    buckets, lsum, causes = list(c.buckets), c.latency_sum_s, dict(c.causes)
                fam["req"].add_metric(m, req)
                fam["img"].add_metric(m, img)
                cum, acc = [], 0
                for le, n in zip(list(map(str, BUCKETS_S)) + ["+Inf"], buckets):
                    acc += n
                    cum.append((le, acc))
                fam["lat"].add_metric(m, cum, lsum)
                fam["miss"].add_metric(m, miss)
                for cause in CAUSES:
                    fam["cause"].add_metric(m + [cause], causes.get(cause, 0))
                fam["en"].add_metric(m, en)
                with service.lock:
                    g = s.rt.governor
                    cur = g.space[g.current] if g.current is not None else None
                    budget = g.budget.to_dict()
                    burst = g.stats.status()["misses"]
                fam["run"].add_metric(m, burst["longest_run"])
                if burst["p_miss_after_miss"] is not None:
                    fam["mam"].add_metric(m, burst["p_miss_after_miss"])
                if cur is not None:
                    fam["cfg"].add_metric(m + [cur.target], cur.level)
                for k, v in budget.items():
                    if v is not None:
                        fam["bud"].add_metric(m + [k], v)
            yield from fam.values()
            errs = CounterMetricFamily("dnnscale_errors", "refused or failed requests and commands, by code",
                                       labels=["code"])
            for code, n in sorted(dict(service.errors).items()):
                errs.add_metric([code], n)
            yield errs
            reh = CounterMetricFamily("dnnscale_rehearsals", "runs on a blank image of the change of level the "
                                      "governor was about to make, while no request waited (config rehearse)")
            reh.add_metric([], service.executor.rehearsals)
            yield reh
            freq = GaugeMetricFamily("dnnscale_frequency_khz", "frequency the kernel reports, by target",
                                     labels=["target"])
            for t, khz in service.frequencies().items():
                if khz is not None:
                    freq.add_metric([t], khz)
            yield freq
            temp = GaugeMetricFamily("dnnscale_temperature_celsius", "thermal zones", labels=["zone"])
            for z, v in service.platform.temperatures().items():
                temp.add_metric([z], v)
            yield temp
            load = service.cpu_load_status()     # other processes on the targets' CPUs (platforms/cpuload.py)
            others = GaugeMetricFamily("dnnscale_cpu_load_others", "CPUs' worth of time other processes "
                                       "used on a target's CPUs over the load signal's window", labels=["target"])
            loaded = GaugeMetricFamily("dnnscale_cpu_load_loaded", "1 where the governor counts a target "
                                       "loaded by other processes", labels=["target"])
            for t, v in load.get("others_cpus", {}).items():
                if v is not None:
                    others.add_metric([t], v)
            for t, v in load.get("loaded", {}).items():
                if v is not None:
                    loaded.add_metric([t], int(v))
            yield others
            yield loaded

    return ServiceCollector()


METRICS_TIMEOUT_S = 5.0     # an idle or half-sent scrape is dropped after this
METRICS_CLIENTS = 16        # scrapes served at once; more are closed at once


def serve(service, port: int, address: str = "127.0.0.1"):
    """Start the HTTP exporter in a thread; returns the server (``shutdown()`` stops it).
    Bounded: at most METRICS_CLIENTS connections at once, each dropped after
    METRICS_TIMEOUT_S of silence, so idle connections cannot pile up threads."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    class Handler(WSGIRequestHandler):
        timeout = METRICS_TIMEOUT_S

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        block_on_close = False
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        slots: threading.BoundedSemaphore

        def process_request(self, request, client_address) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)      # over the bound: closed, not queued
                return
            try:
                super().process_request(request, client_address)
            except Exception:
                self.slots.release()
                raise

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    registry = CollectorRegistry()
    registry.register(_collector(service))
    httpd = make_server(address, port, make_wsgi_app(registry), Server, handler_class=Handler)
    httpd.slots = threading.BoundedSemaphore(METRICS_CLIENTS)
    threading.Thread(target=httpd.serve_forever, name="dnnscale-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", address, port)
    return httpd
