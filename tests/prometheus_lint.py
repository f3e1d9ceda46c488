"""The rules of `promtool check metrics` that the expositions of this project could break (promtool
itself is not installed here): every family has HELP and TYPE, counters end in _total, and the
`quantile` label belongs to summaries only."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? \S+$")


def problems(text: str) -> list[str]:
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            kinds[name] = kind
            if kind == "counter" and not name.endswith("_total"):
                found.append(f"counter {name} does not end in _total")
            if name not in helped:
                found.append(f"{name} has no HELP")
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            if match is None:
                found.append(f"not a sample line: {line!r}")
                continue
            name, labels = match.group(1), match.group(2) or ""
            family = next((f for f in kinds if name == f or name in (f + "_sum", f + "_count")), None)
            if family is None:
                found.append(f"{name} has no TYPE")
            elif 'quantile="' in labels and kinds[family] != "summary":
                found.append(f"{name} is a {kinds[family]} with a quantile label (summaries only)")
    return found
