"""A small Prometheus registry: counters, gauges and histograms in text format 0.0.4.

One registry per node (not a module-level global), so many simulated nodes can live
in one process without sharing counters.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

Labels = tuple[tuple[str, str], ...]
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    allx = labels + extra
    if not allx:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in allx) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric(ABC):
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text

    @abstractmethod
    def samples(self) -> Iterable[str]:
        """Sample lines of this metric, without HELP and TYPE."""

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> Iterable[str]:
        for labels, v in sorted(self._values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(v)}"


# A labelled gauge's callback: one (labels, value) pair per series, read at scrape time.
Collect = Callable[[], Iterable[tuple[Mapping[str, str], float]]]


class Gauge(_Metric):
    """A gauge read from a callback at scrape time (one value, or labelled series from
    ``collect``), or set explicitly."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        fn: Callable[[], float] | None = None,
        collect: Collect | None = None,
    ) -> None:
        super().__init__(name, help_text)
        self._fn = fn
        self._collect = collect
        self._values: dict[Labels, float] = {}

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] = value

    def samples(self) -> Iterable[str]:
        if self._fn is not None:
            yield f"{self.name} {_fmt_value(self._fn())}"
        values = dict(self._values)
        if self._collect is not None:
            for named, v in self._collect():
                values[tuple(sorted(named.items()))] = v
        for labels, v in sorted(values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(v)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, help_text)
        self._bounds = tuple(sorted(buckets))
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, totals = self._series.setdefault(key, ([0] * (len(self._bounds) + 1), [0.0]))
        counts[bisect.bisect_left(self._bounds, value)] += 1
        totals[0] += value

    def samples(self) -> Iterable[str]:
        for labels, (counts, totals) in sorted(self._series.items()):
            cumulative = 0
            for bound, n in zip((*self._bounds, math.inf), counts, strict=True):
                cumulative += n
                le = (("le", _fmt_value(bound)),)
                yield f"{self.name}_bucket{_fmt_labels(labels, le)} {cumulative}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {_fmt_value(totals[0])}"
            yield f"{self.name}_count{_fmt_labels(labels)} {cumulative}"


_M = TypeVar("_M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _M) -> _M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str) -> Counter:
        return self._add(Counter(name, help_text))

    def gauge(
        self,
        name: str,
        help_text: str,
        fn: Callable[[], float] | None = None,
        collect: Collect | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, help_text, fn, collect))

    def histogram(self, name: str, help_text: str) -> Histogram:
        return self._add(Histogram(name, help_text))

    def render(self) -> str:
        return "".join(m.render() for m in self._metrics.values())
