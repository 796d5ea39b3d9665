"""The dashboard in a real browser during a real session (real broker, server and nodes), and /metrics against
the session's history. Headless Chromium (Debian's, installed by scripts/test.sh) driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import REPO, Federation, port_open, wait_until

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROUNDS = 3


def chromium_path() -> str:
    found = os.environ.get("FL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no Chromium for the dashboard's browser test (scripts/test.sh installs Debian's chromium; "
                    "or set FL_CHROMIUM)")
    return found


def earlier_session(path: Path) -> None:
    """A past session in --history-dir, for the page to list and overlay."""
    rounds = [{"round": r, "status": "completed", "participants": ["a"], "accepted": ["a"], "rejected_updates": 0,
               "holdout": {"accuracy": acc, "loss": 2.0 - 2 * acc}, "timings_s": {"total": 1.0}}
              for r, acc in ((1, 0.3), (2, 0.45), (3, 0.55))]
    path.write_text(json.dumps({"format": "fl-history/1", "session_id": "earlier-run", "status": "completed",
                                "config": {"strategy": "fedavg"}, "rounds": rounds}))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def inject_unsigned_record(federation: Federation) -> None:
    """A record no node signed: the server must reject it (and count it, in the history and in /metrics)."""
    producer = KafkaProducer(bootstrap_servers=federation.kafka)
    producer.send(federation.updates_topic, key=b"n1", value=b"not an update")
    producer.flush(timeout=30)
    producer.close(timeout=10)


def test_dashboard_shows_a_live_session_and_metrics_match_its_history(federation: Federation) -> None:
    from playwright.sync_api import sync_playwright

    federation.history_dir.mkdir(parents=True)
    earlier_session(federation.history_dir / "zz-earlier-run.json")  # sorts after the session's own file
    server = federation.start_server("--min-nodes", "2", "--rounds", str(ROUNDS), "--round-timeout", "90",
                                     "--linger", "300")
    wait_until(lambda: port_open(federation.port), 120, "the server's port")
    server.wait_for_log(r"dashboard at http://127\.0\.0\.1:\d+/dashboard/", 60)
    base = f"http://127.0.0.1:{federation.port}"
    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1100})
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            page.goto(base + "/", wait_until="domcontentloaded")  # redirects to /dashboard/
            # CSS selectors only: the page's Content-Security-Policy forbids evaluating strings as script.
            page.wait_for_selector("body[data-live=on]", state="attached", timeout=60_000)
            server.wait_for_log(r"reading \S+ from offsets", 120)  # the consumer is positioned: it will see this
            inject_unsigned_record(federation)
            nodes = federation.start_nodes(2)
            # The page follows the session on its own (server-sent events): no reload from here on.
            page.wait_for_selector("#rounds tbody tr[data-round='1']", timeout=300_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-during.png"), full_page=True)
            page.wait_for_selector(f"#rounds tbody tr[data-round='{ROUNDS}']", timeout=300_000)
            page.wait_for_selector("body[data-status=completed]", state="attached", timeout=120_000)
            history = federation.history()
            assert history is not None and history["status"] == "completed"

            assert page.inner_text("#round-current") == str(ROUNDS)
            assert page.inner_text("#rounds-total") == str(ROUNDS)
            assert page.inner_text("#session-id") == history["session_id"]
            rows = page.eval_on_selector_all("#rounds tbody tr", "rows => rows.map(r => r.dataset.round)")
            assert sorted(map(int, rows)) == list(range(1, ROUNDS + 1))
            node_ids = page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.dataset.node)")
            assert node_ids == ["n0", "n1"]
            points = page.eval_on_selector_all("#acc-chart circle.point", "ps => ps.map(p => p.dataset.round)")
            assert list(map(int, points)) == list(range(1, ROUNDS + 1))  # one accuracy point per round
            shown = page.eval_on_selector_all("#rounds tbody tr td:nth-child(7)", "cells => cells.map(c => "
                                              "c.textContent)")
            assert sorted(shown) == sorted(f"{r['holdout']['accuracy']:.4f}" for r in history["rounds"])
            rejected = sum(r.get("rejected_updates", 0) for r in history["rounds"])
            assert rejected >= 1, "the injected record should be rejected"
            total_shown = page.eval_on_selector_all("#rejections li[data-reason] b",
                                                    "bs => bs.reduce((s, b) => s + Number(b.textContent), 0)")
            assert total_shown == rejected
            # A past session of --history-dir, overlaid on the live curves.
            page.check('#runs tr[data-run="zz-earlier-run.json"] input[type=checkbox]')
            page.wait_for_selector("#acc-chart polyline.past", timeout=30_000)
            assert page.get_attribute("#link-history", "class") != "disabled"
            runs = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
            assert runs == ["zz-earlier-run.json"]  # past sessions only: not the live one
            page.screenshot(path=str(ARTIFACTS / "dashboard-end.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors

    metrics = scrape(base + "/metrics")
    records = history["rounds"]
    by_reason: Counter[str] = Counter()
    for r in records:
        by_reason.update(r.get("rejected_updates_by_reason", {}))
    assert metrics[("fl_updates_accepted_total", ())] == sum(len(r["accepted"]) for r in records)
    rejected_metrics = {labels[0][1]: value for (name, labels), value in metrics.items()
                        if name == "fl_updates_rejected_total"}
    assert rejected_metrics == dict(by_reason) and sum(by_reason.values()) >= 1
    statuses = Counter(r["status"] for r in records)
    assert metrics[("fl_rounds_total", (("status", "completed"),))] == statuses["completed"] == ROUNDS
    assert metrics[("fl_rounds_total", (("status", "failed"),))] == statuses["failed"]
    assert metrics[("fl_round", ())] == ROUNDS
    assert metrics[("fl_holdout_accuracy", ())] == records[-1]["holdout"]["accuracy"]
    assert metrics[("fl_round_duration_seconds_count", (("stage", "train"),))] == ROUNDS
    assert metrics[("fl_kafka_consumed_records_total", ())] >= 2 * ROUNDS
    (ARTIFACTS / "metrics.txt").write_bytes(urllib.request.urlopen(base + "/metrics", timeout=30).read())
    for node in nodes:
        assert node.wait(60) == 0, node.log()[-3000:]
    server.stop()  # ends the linger (a signal is not an error there)
    assert server.popen.returncode == 0, server.log()[-3000:]
