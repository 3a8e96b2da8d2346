"""deploy/grafana/hearth-dashboard.json charts what the app exports, and nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from project.metrics import install, metric_names

pytestmark = pytest.mark.backend_free

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "hearth-dashboard.json"
_NAME = re.compile(r"\bhearth_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold theirs
    return panels


def _exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_importable_with_a_prometheus_input(dashboard):
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["pluginId"] == "prometheus"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_every_expression_names_only_registered_metrics(dashboard):
    registered = metric_names()
    used = {name for expr in _exprs(dashboard) for name in _NAME.findall(expr)}
    assert used, "the dashboard queries no hearth_* metric"
    unknown = used - registered
    assert not unknown, f"the dashboard queries metrics the app does not export: {unknown}"


def test_every_metric_family_has_a_panel(dashboard):
    install()
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("hearth_")}
    text = "\n".join(_exprs(dashboard))
    uncharted = {
        family
        for family in families
        if not re.search(rf"\b{family}(_total|_bucket|_sum|_count)?\b", text)
    }
    assert not uncharted, f"metrics with no panel: {uncharted}"
