"""A strict reader of the Prometheus text format (0.0.4), enough to check what snapctl writes."""

from __future__ import annotations

import re

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})? (?P<value>\S+)$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(name, labels): value}; fails on anything a Prometheus scraper would reject."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP twice for {name}"
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("gauge", "counter", "untyped"), line
            assert name not in typed, f"TYPE twice for {name}"
            typed[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name = match.group("name")
            assert name in typed and name in helped, f"{name} sampled before its HELP/TYPE"
            if typed[name] == "counter":
                assert name.endswith("_total"), f"counter {name} must end in _total"
            labels = frozenset(_LABEL_PAIR.findall(match.group("labels") or ""))
            key = (name, labels)
            assert key not in samples, f"duplicate series {line!r}"
            samples[key] = float(match.group("value"))
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
