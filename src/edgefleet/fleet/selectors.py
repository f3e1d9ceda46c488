"""Device selectors: `profile=rpi4,site=lab` picks the devices whose profile is rpi4 AND whose tag `site` is
`lab`. Keys `id` and `profile` are reserved; any other key names a tag from the agent config.

A value may list alternatives with `|` (`site=lab|office`) and use shell wildcards (`id=pi-*`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgefleet.contract.errors import EdgefleetError

_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


_WILDCARD = re.compile(r"[*?\[]")  # a pattern with these is meant to match several values


class SelectorError(EdgefleetError):
    """A selector that cannot be parsed, or one that matches no device."""


@dataclass(frozen=True)
class Term:
    key: str
    patterns: tuple[str, ...]

    def matches(self, value: str | None) -> bool:
        # fnmatchcase: selectors must behave the same on every host OS
        return value is not None and any(fnmatch.fnmatchcase(value, p) for p in self.patterns)

    def __str__(self) -> str:
        return f"{self.key}={'|'.join(self.patterns)}"


@dataclass(frozen=True)
class Selector:
    """All terms must match (an empty selector matches nothing: a rollout must name its targets)."""

    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        terms: list[Term] = []
        seen: set[str] = set()
        if not text.strip():
            raise SelectorError(
                "the selector is empty; name the devices, e.g. --select profile=rpi4,site=lab "
                "or --select 'id=*'"
            )
        for raw in text.split(","):
            part = raw.strip()
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise SelectorError(
                    f"selector {text!r}: term {part!r} is not KEY=VALUE; use e.g. profile=rpi4,site=lab "
                    "(keys: id, profile, or any tag of the agent config)"
                )
            if not _KEY.match(key):
                raise SelectorError(
                    f"selector {text!r}: key {key!r} may only use A-Z a-z 0-9 _ . - (1-64 characters)"
                )
            if key in seen:
                raise SelectorError(
                    f"selector {text!r}: key {key!r} appears twice; list alternatives as {key}=a|b"
                )
            seen.add(key)
            patterns = tuple(p.strip() for p in value.split("|"))
            if any(not p for p in patterns):
                raise SelectorError(f"selector {text!r}: an alternative in {part!r} is empty")
            terms.append(Term(key, patterns))
        return cls(tuple(terms))

    def matches(self, device_id: str, profile: str | None, tags: Mapping[str, str]) -> bool:
        for term in self.terms:
            if term.key == "id":
                value: str | None = device_id
            elif term.key == "profile":
                value = profile
            else:
                value = tags.get(term.key)
            if not term.matches(value):
                return False
        return bool(self.terms)

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)


def explain_no_match(selector: Selector, known: Iterable[tuple[str, str | None, Mapping[str, str]]]) -> str:
    """Why nothing matched: what the known devices offer for each key the selector uses."""
    devices = list(known)
    if not devices:
        return f"selector '{selector}' matches no device: no device has announced itself on this broker"
    hints = []
    for term in selector.terms:
        if term.key == "id":
            values = sorted(d for d, _, _ in devices)
        elif term.key == "profile":
            values = sorted({p for _, p, _ in devices if p})
        else:
            values = sorted({t[term.key] for _, _, t in devices if term.key in t})
        shown = ", ".join(values[:8]) + (f" (+{len(values) - 8} more)" if len(values) > 8 else "")
        close = [
            c
            for p in term.patterns
            if not _WILDCARD.search(p)
            for c in difflib.get_close_matches(p, values, 1)
        ]
        guess = f"did you mean {' or '.join(repr(c) for c in dict.fromkeys(close))}? " if close else ""
        hints.append(f"{term.key}: {guess}{shown or 'no device has this tag'}")
    return (
        f"selector '{selector}' matches none of the {len(devices)} known devices; known values - "
        + "; ".join(hints)
        + " (see `edgefleet devices`)"
    )


def explain_unknown_device(device_id: str, known: Iterable[str]) -> str:
    """A device id no device has announced on this broker: the closest known id, when one is close."""
    ids = sorted(known)
    if not ids:
        return f"device '{device_id}' is not known: no device has announced itself on this broker"
    close = difflib.get_close_matches(device_id, ids, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"device '{device_id}' is not known on this broker ({hint}{len(ids)} known; see `edgefleet devices`)"
    )
