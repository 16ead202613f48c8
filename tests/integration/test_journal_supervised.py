"""The README demo's third part as a test: real supervisord, boot and service, kill -9 of the whole tree.

After the cut nothing had been persisted since the boot; the second boot restores generation 1,
the service replays the journal before the canary and admission, and the next adaptation step
continues the counter exactly (``appliance.cli.demo_journal``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.demo_journal import run_journal_demo

pytestmark = pytest.mark.integration


def test_power_cut_of_the_whole_tree_loses_no_acknowledged_step(tmp_path: Path) -> None:
    assert run_journal_demo(tmp_path)


def test_trial_4_n4_boot_serves_after_a_stopped_replay_and_says_so(tmp_path: Path) -> None:
    """Step 3's step and outcome records removed after a power cut: replay stops at the gap and sets aside
    steps 4-6; boot still serves (exit 0) and its text, its event and `boot-status` say where and why."""
    from appliance.cli.demo_supervised import TARGET, X
    from appliance.cli.localnode import LocalNode
    from appliance.events import event_fields
    from appliance.journal.keyfile import load_journal_key
    from tests.integration.test_journal_replay import _read

    node = LocalNode.create(tmp_path / "n", persist_interval=3600, journal=True)
    try:
        node.seed()
        node.start()
        assert node.boot()[0] == 0
        for _ in range(6):
            assert node.control_call("/v1/adapt", {"inputs": X, "targets": TARGET})[0] == 200
        node.power_cut()
        (seg,) = sorted(Path(node.config.journal_dir).glob("seg-*.ajl"))
        parsed = _read(seg, load_journal_key(node.config.journal_key_file()))
        third = next(r for r in parsed.records if r.index == 3)
        data = seg.read_bytes()
        seg.write_bytes(data[: third.offset] + data[parsed.outcomes[3].end :])
        node.start()
        booted = node.cli("boot")
        assert booted.returncode == 0, booted.stderr
        assert "JOURNAL REPLAY STOPPED at record 3" in booted.stdout and "(gap)" in booted.stdout
        assert "journal replay: 2 steps replayed (to index 2)" in booted.stdout
        assert "3 journaled step records" in booted.stdout and "retired" in booted.stdout
        replay = event_fields(node.events("boot.serving")[-1])["replay"]  # what `boot --json` prints as "replay"
        assert replay["stopped"]["kind"] == "gap" and replay["stopped"]["index"] == 3
        code, status = node.cli_json("boot-status")
        assert code == 0 and status["service"]["replay"]["set_aside_records"] == 3
        assert "JOURNAL REPLAY STOPPED at record 3" in node.cli("boot-status").stdout
    finally:
        node.stop()
