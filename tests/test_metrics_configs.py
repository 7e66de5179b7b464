"""The Grafana dashboard and the Prometheus alert rules shipped in spotinference.configs (issue 19,
item 4): the rules load in promtool (Debian's `prometheus` package), and every metric their
expressions and the dashboard's name exists in a real scrape of a gateway running a fleet tier on
`spot sim cloud`, with the budget gate, after one request.

Metric names are read out of the PromQL with a regex for the project's own prefix (``spot_``
followed by name characters). Its limits: a name built at query time (``{__name__=~"..."}``) or a
metric without that prefix would not be seen, and a label value starting with ``spot_`` would be
taken for a name; the test also requires every expression to name at least one metric, so a
regex that stopped matching fails rather than passes.
"""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.servers import operator_headers
from tests.system_packages import ensure_program
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, fleet, start_gateway, write_config  # noqa: F401 - fleet is a fixture

METRIC = re.compile(r"\bspot_[a-zA-Z0-9_:]*")
ALERTS = {"SpotBudgetGateClosed", "SpotBillingSamplerStale", "SpotTierWakeSlow", "SpotTierFailingOver", "SpotErrorRateHigh"}


def shipped(name: str) -> str:
    return resources.files("spotinference.configs").joinpath(name).read_text()


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(shipped("prometheus-alerts.yml"))["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(shipped("grafana-dashboard.json"))
    return {f"{panel['title']} ({target['refId']})": target["expr"]
            for panel in dashboard["panels"] for target in panel["targets"]}


def test_the_alert_rules_load_in_promtool(tmp_path: Path) -> None:
    promtool = ensure_program("promtool", "prometheus", required=True)
    rules = tmp_path / "prometheus-alerts.yml"
    rules.write_text(shipped("prometheus-alerts.yml"))
    result = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
    assert set(rule_expressions()) == ALERTS


def annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations with ``{{ $labels.X }}`` filled in (enough for rules without $value)."""
    groups = yaml.safe_load(shipped("prometheus-alerts.yml"))["groups"]
    rule = next(rule for group in groups for rule in group["rules"] if rule["alert"] == alert)
    filled = {}
    for key, text in rule["annotations"].items():
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        filled[key] = text
    return filled


def expected(alert: str, labels: dict[str, str]) -> dict:
    return {"exp_labels": labels, "exp_annotations": annotations(alert, labels)}


def test_the_gate_closed_and_slow_wake_alerts_fire(tmp_path: Path) -> None:
    """promtool's rule unit test: two minutes of a closed gate page (an open gate does not); a wake
    pages once it passes 8 minutes, not before."""
    promtool = ensure_program("promtool", "prometheus", required=True)
    (tmp_path / "prometheus-alerts.yml").write_text(shipped("prometheus-alerts.yml"))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["prometheus-alerts.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [
                       {"series": 'spot_budget_gate_open{instance="a",reason="budget_exhausted"}', "values": "0x5"},
                       {"series": 'spot_budget_gate_open{instance="b",reason="ok"}', "values": "1x5"},
                       {"series": 'spot_tier_wake_elapsed_seconds{instance="a",tier="demo"}', "values": "400+60x5"}],
                   "alert_rule_test": [
                       {"eval_time": "1m", "alertname": "SpotBudgetGateClosed", "exp_alerts": []},
                       {"eval_time": "3m", "alertname": "SpotBudgetGateClosed", "exp_alerts": [expected(
                           "SpotBudgetGateClosed", {"severity": "page", "instance": "a", "reason": "budget_exhausted"})]},
                       {"eval_time": "1m", "alertname": "SpotTierWakeSlow", "exp_alerts": []},
                       {"eval_time": "2m", "alertname": "SpotTierWakeSlow", "exp_alerts": [expected(
                           "SpotTierWakeSlow", {"severity": "warn", "instance": "a", "tier": "demo"})]}]}],
    }))
    result = subprocess.run([str(promtool), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_dashboard_and_rules_use_is_in_a_real_scrape(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    expressions = {**rule_expressions(), **dashboard_expressions()}
    used: set[str] = set()
    for where, expr in expressions.items():
        names = set(METRIC.findall(expr))
        assert names, f"{where}: no spot_ metric found in {expr!r}"
        used |= names

    write_config(fleet.base_url, fallback=False)
    ok("up", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                                stream=True, stream_options={"include_usage": True})
        assert [chunk for chunk in stream][-1].usage.completion_tokens > 0
        text = httpx.get(f"{gateway.url}/metrics", headers=operator_headers(home), timeout=10).text
    finally:
        gateway.server.stop()
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    missing = used - scraped
    assert not missing, f"named by the dashboard or rules, missing from the scrape: {sorted(missing)}\n{text}"
