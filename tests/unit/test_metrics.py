"""The Prometheus text exposition is well formed."""

from __future__ import annotations

import re

from meshd.metrics import Registry

LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
LINE = re.compile(rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{LABEL}(,{LABEL})*\}})? -?[0-9.e+Inf-]+$")


def test_render_is_valid_prometheus_text() -> None:
    reg = Registry()
    c = reg.counter("t_requests_total", "requests")
    c.inc(route="/v1/node", code="200")
    c.inc(2, route="/v1/node", code="200")
    g = reg.gauge("t_up", "up", lambda: 1.0)
    g.set(3.5, shard='a"b')
    h = reg.histogram("t_seconds", "latency")
    for v in (0.0001, 0.003, 0.2, 9.0):
        h.observe(v, route="x")
    text = reg.render()
    assert c.value(route="/v1/node", code="200") == 3
    for line in text.splitlines():
        assert line.startswith("#") or LINE.match(line), line
    assert 't_requests_total{code="200",route="/v1/node"} 3' in text
    assert 't_seconds_bucket{route="x",le="+Inf"} 4' in text
    assert 't_seconds_count{route="x"} 4' in text
    assert 't_up{shard="a\\"b"} 3.5' in text


def test_histogram_buckets_are_cumulative() -> None:
    reg = Registry()
    h = reg.histogram("h", "h")
    for v in (0.0004, 0.0004, 0.05, 100.0):
        h.observe(v)
    counts = [
        int(line.rsplit(" ", 1)[1]) for line in reg.render().splitlines() if "_bucket" in line
    ]
    assert counts == sorted(counts)
    assert counts[0] == 2 and counts[-1] == 4
