"""The opt-in Prometheus endpoint of the real ``dnnscale serve``: the exposition format as
prometheus_client parses it, and (marked ``prometheus``) a real Prometheus server scraping it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from tests.daemon_harness import Daemon
from tests.fixtures import trees
from tests.fixtures.ports import free_port

pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def metered(random_set, tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    root = trees.build("generic", str(work / "sysfs"))
    port = free_port()
    cfg = work / "c.yaml"
    cfg.write_text("metrics_port: %d\n" % port)
    d = Daemon(str(work / "run"), random_set, sysfs_root=root, config=str(cfg))
    d.wait_ready()
    yield d, port
    d.stop()


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint(metered):
    d, port = metered
    with d.client() as c:
        M = (("model", c.status()["model"]["name"]),)     # a model set's metrics are labelled with its name
        c.set_budget(latency_ms=0.001)                   # every request misses
        for _ in range(5):
            c.infer(np.zeros((2, 32, 32, 3), np.uint8))
        assert scrape(port)[("dnnscale_longest_miss_run", M)] == 5      # since the budget was set
        c.clear_budget()
        with pytest.raises(Exception):
            c.infer(np.zeros((2, 32, 32, 3), np.uint8), groups=9)
        for _ in range(5):          # decisions after the load signal's window has filled: its state is known
            time.sleep(0.01)
            c.infer(np.zeros((1, 32, 32, 3), np.uint8))
    m = scrape(port)
    assert m[("dnnscale_requests_total", M)] >= 5 and m[("dnnscale_images_total", M)] >= 10
    assert m[("dnnscale_deadline_misses_total", M)] >= 5
    causes = {dict(k[1])["cause"]: v for k, v in m.items() if k[0] == "dnnscale_deadline_misses_by_cause_total"}
    assert set(causes) == {"infeasible", "frequency_cap", "switch", "wake_up", "contention", "prediction"}
    assert sum(causes.values()) >= 5
    assert m[("dnnscale_longest_miss_run", M)] == 0                   # a new budget: counted afresh
    assert m[("dnnscale_errors_total", (("code", "bad_groups"),))] >= 1
    with d.client() as c:                                               # the board's, as status counts them
        assert m[("dnnscale_rehearsals_total", ())] == c.status()["rehearsals"]
    assert m[("dnnscale_latency_seconds_count", M)] >= 5
    assert m[("dnnscale_latency_seconds_bucket", (("le", "+Inf"),) + M)] == m[("dnnscale_latency_seconds_count", M)]
    assert any(k[0] == "dnnscale_frequency_khz" for k in m) and any(k[0] == "dnnscale_temperature_celsius" for k in m)
    assert any(k[0] == "dnnscale_config_groups" for k in m)
    # the load signal (this machine's /proc/stat): per CPU target, others' CPUs and the state
    others = {dict(k[1])["target"]: v for k, v in m.items() if k[0] == "dnnscale_cpu_load_others"}
    loaded = {dict(k[1])["target"]: v for k, v in m.items() if k[0] == "dnnscale_cpu_load_loaded"}
    assert others and all(v >= 0 for v in others.values()) and set(loaded) <= set(others)
    assert loaded and set(loaded.values()) <= {0, 1}


def test_metrics_bind_loopback_by_default(metered):
    _, port = metered
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("no ss here")
    assert "127.0.0.1:%d" % port in out.stdout


def test_idle_connections_keep_no_thread(metered):
    """Connections that send half a request and wait hold at most METRICS_CLIENTS threads,
    each for METRICS_TIMEOUT_S; then a scrape is answered again and the threads are gone."""
    from daemon.metrics import METRICS_CLIENTS, METRICS_TIMEOUT_S
    d, port = metered
    threads = lambda: len(os.listdir("/proc/%d/task" % d.proc.pid))
    base = threads()
    idle = []
    for _ in range(3 * METRICS_CLIENTS):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metr")
        idle.append(s)
    time.sleep(0.5)
    assert threads() <= base + METRICS_CLIENTS
    time.sleep(METRICS_TIMEOUT_S + 1)
    assert threads() <= base + 1
    assert any(k[0] == "dnnscale_requests_total" for k in scrape(port))
    for s in idle:
        s.close()


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")
def test_a_real_prometheus_scrapes_the_daemon(metered, tmp_path):
    d, port = metered
    with d.client() as c:
        for _ in range(3):
            c.infer(np.zeros((1, 32, 32, 3), np.uint8))
    web = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: dnnscale\n"
                    "    static_configs: [{targets: ['127.0.0.1:%d'], labels: {board: test}}]\n" % port)
    p = subprocess.Popen(["prometheus", "--config.file=%s" % conf, "--storage.tsdb.path=%s" % (tmp_path / "db"),
                          "--web.listen-address=127.0.0.1:%d" % web], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        value, deadline = None, time.time() + 60
        while time.time() < deadline and value is None:
            time.sleep(1)
            try:
                r = json.loads(urllib.request.urlopen(
                    "http://127.0.0.1:%d/api/v1/query?query=dnnscale_requests_total" % web, timeout=5).read())
                res = r["data"]["result"]
                if res:
                    value = float(res[0]["value"][1])
                    assert res[0]["metric"]["board"] == "test"
            except OSError:
                pass
        assert value is not None and value >= 3
    finally:
        p.terminate()
        p.wait(30)
