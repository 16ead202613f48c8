"""The standby model service (docs/boot.md §14): started with supervisord, restoring only what boot hands it."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.cli.localnode import LocalNode
from appliance.format.handoff import Phase, ServiceReport
from appliance.node.rundir import RunDir
from tests.integration.boot_harness import NodeFactory, node_factory

pytestmark = [pytest.mark.integration]
__all__ = ["node_factory"]
INPUT = [[0.5] * 16]


def _report(node: LocalNode) -> ServiceReport | None:
    return RunDir(node.config.run_dir).read_report()


def _standby(node: LocalNode) -> ServiceReport:
    def built() -> ServiceReport | None:
        report = _report(node)
        return report if report is not None and report.phase is Phase.STANDBY else None

    report: ServiceReport = node.wait_for("the service to reach standby", built, timeout=90)
    return report


def _pid(node: LocalNode) -> int:
    return node.control().info(node.config.service_program).pid


@pytest.mark.parametrize("model_init", ["factory", "meta"])
def test_standby_serves_nothing_until_boot_hands_it_a_checkpoint(node_factory: NodeFactory, model_init: str) -> None:
    """B1 with a standby: built and listening, it answers 503 and restores nothing; boot then keeps that process."""
    node = node_factory(model_init=model_init)
    node.seed()
    node.start()
    report = _standby(node)
    assert report.handoff is None and report.restore is None and report.pid == _pid(node)
    status, body = node.call("/v1/infer", {"inputs": INPUT})
    assert status == 503 and "standby" in str(body)
    status, health = node.call("/ready")
    assert status == 503 and health["phase"] == "standby"
    code, outcome = node.boot()
    assert code == 0, outcome
    assert _pid(node) == report.pid, "boot restarted the standby instead of handing it the checkpoint"
    assert outcome["stages"]["standby_wait_s"] >= 0 and outcome["serving"]["generation"] == 1
    status, body = node.call("/v1/infer", {"inputs": INPUT})
    assert status == 200 and body["generation"] == 1


def test_boot_replaces_a_service_that_read_an_earlier_handoff(node_factory: NodeFactory) -> None:
    """A service that started from a handoff left in the run directory is never kept: boot starts a fresh one."""
    node = node_factory()
    node.seed()
    node.start()
    assert node.boot()[0] == 0
    node.stop()  # orderly: the run directory (and boot's SELF handoff) stays, as after a supervisord restart
    node.start()
    earlier: dict[str, Any] = {}

    def restored_itself() -> ServiceReport | None:
        report = _report(node)
        ok = report is not None and report.handoff is not None and report.phase is Phase.SERVING
        return report if ok and report.pid == _pid(node) else None

    earlier["report"] = node.wait_for("the service to restore the earlier handoff", restored_itself, timeout=90)
    code, outcome = node.boot()
    assert code == 0, outcome
    assert _pid(node) != earlier["report"].pid, "boot kept a service that had read another boot's handoff"
    assert "standby_wait_s" not in outcome["stages"]
    assert node.call("/v1/infer", {"inputs": INPUT})[0] == 200


def test_boot_without_a_running_service_starts_one(node_factory: NodeFactory) -> None:
    """A standby that supervisord gave up on (or a stopped one) is no obstacle: boot starts the service itself."""
    node = node_factory()
    node.seed()
    node.start()
    _standby(node)
    node.control().stop(node.config.service_program)
    code, outcome = node.boot()
    assert code == 0, outcome
    assert node.call("/v1/infer", {"inputs": INPUT})[0] == 200
