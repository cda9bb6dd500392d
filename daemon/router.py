"""Ordered routing rules: an arrival goes to one or more pipelines.

Rules are tried in order; the first that matches decides, unless it sets
``continue = true``, in which case later rules may add pipelines too. A field left empty
in a rule matches anything. No match is a logged, counted outcome, not an error.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Collection, Sequence

from acqflow.daemon.config import RouteRule
from acqflow.daemon.jobqueue import RouteDecision
from acqflow.daemon.journal import Arrival

__all__ = ["Router"]

log = logging.getLogger(__name__)


def _matches(allowed: Sequence[str], value: str | None, *, casefold: bool = True) -> bool:
    if not allowed:
        return True
    if value is None:
        return False
    if casefold:
        return value.casefold() in {a.casefold() for a in allowed}
    return value in allowed


def _rule_matches(rule: RouteRule, arrival: Arrival) -> bool:
    attrs = arrival.attrs
    metadata = attrs.get("metadata") or {}
    if not _matches(rule.source, arrival.source) or not _matches(rule.kind, arrival.kind):
        return False
    if not _matches(rule.modality, attrs.get("modality")):
        return False
    if not _matches(rule.calling_ae, attrs.get("calling_ae"), casefold=False):
        return False
    channel = metadata.get("channel")
    if not _matches(rule.channel, channel):
        return False
    if rule.channel_not and channel is not None and _matches(rule.channel_not, channel):
        return False
    if rule.path_glob is not None:
        candidate = str(attrs.get("relative_path") or arrival.path)
        if not (
            fnmatch.fnmatch(candidate, rule.path_glob) or fnmatch.fnmatch(str(arrival.path), rule.path_glob)
        ):
            return False
    return True


class Router:
    """Maps arrivals to pipelines; ``available`` tells which pipelines can run here."""

    def __init__(self, rules: Sequence[RouteRule], available: Callable[[], Collection[str]]) -> None:
        self._rules = tuple(rules)
        self._available = available

    def decide(self, arrival: Arrival) -> list[RouteDecision]:
        """The pipelines (with route name and export destinations) for ``arrival``."""
        decisions: list[RouteDecision] = []
        available = set(self._available())
        for rule in self._rules:
            if not _rule_matches(rule, arrival):
                continue
            for pipeline in rule.pipelines:
                if pipeline not in available:
                    log.error(
                        "route %s names pipeline %s, which is not available; arrival %d skips it",
                        rule.name,
                        pipeline,
                        arrival.id,
                    )
                    continue
                if all(d.pipeline != pipeline for d in decisions):
                    decisions.append(RouteDecision(pipeline, rule.name, tuple(rule.export)))
            if not rule.continue_matching:
                break
        return decisions
