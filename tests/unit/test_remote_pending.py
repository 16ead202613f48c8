"""One rule for "an upload is pending": ``remote status``, its queue-depth metric and ``remote prune`` agree.

The rule is ``appliance.format.remote.upload_pending`` (docs/design.md §11.7). Before it, prune refused
only once the queue recorded ``pending_generation`` while status already called a committed, not yet
picked-up checkpoint pending; here every state of the upload queue is checked against all three readers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip(
    "prometheus_client",
    reason="the queue-depth metric needs prometheus_client (absent from the torch-free Python 3.10 smoke)",
)

from appliance.cli.remote_commands import queue_fields
from appliance.errors import PruneRefusedError
from appliance.format.remote import upload_pending
from appliance.remote.metrics import ReplicateMetrics, _samples
from appliance.remote.prune import refuse_while_pending
from appliance.remote.state import Replicated, ReplicationState

pytestmark = pytest.mark.unit

generations = st.none() | st.integers(min_value=0, max_value=6)


def _state(replicated: int | None, pending_generation: int | None) -> ReplicationState:
    done = Replicated(replicated, "ab" * 32, replicated, "2026-01-01T00:00:00Z") if replicated is not None else None
    return ReplicationState("node-1", replicated=done, pending_generation=pending_generation)


def _prune_refuses(state: ReplicationState, newest: int | None) -> int | None:
    """The generation prune's refusal names, or ``None`` when prune goes ahead (what ``remote prune`` calls)."""
    try:
        refuse_while_pending(state.pending(newest))
    except PruneRefusedError as exc:
        assert exc.exit_code == 87 and "nothing was deleted" in exc.problem
        return int(exc.problem.split("generation ")[1].split()[0])
    return None


def _queue_depth(state: ReplicationState, newest: int | None) -> float:
    metrics = ReplicateMetrics(Path("/nonexistent"))  # render only: nothing is written
    metrics.update(state, newest)
    return _samples(metrics.render().decode())["appliance_replicate_queue_depth"]


@given(replicated=generations, pending_generation=generations, newest=generations)
def test_status_prune_and_the_queue_metric_agree_on_pending_over_every_queue_state(
    replicated: int | None, pending_generation: int | None, newest: int | None
) -> None:
    state = _state(replicated, pending_generation)
    status = queue_fields(state, newest)
    refused = _prune_refuses(state, newest)
    assert status["pending"] == (refused is not None) == (_queue_depth(state, newest) == 1.0)
    assert status["pending_upload"] == refused  # both name the same generation


@pytest.mark.parametrize(
    ("replicated", "pending_generation", "newest", "expected"),
    [
        (3, None, 4, 4),  # the trial's case: committed, not yet picked up by the replicator
        (None, None, 1, 1),  # nothing replicated yet
        (3, 4, 4, 4),  # an upload started (may be in flight now)
        (3, 5, 4, 5),  # an upload failed and waits for its retry, even if the store now opens an older one
        (4, None, 4, None),  # up to date
        (5, None, 4, None),  # the replica is ahead (the newest local checkpoint was refused)
        (None, None, None, None),  # nothing committed, nothing replicated
    ],
)
def test_a_commit_the_replicator_has_not_picked_up_is_pending_for_status_and_prune_alike(
    replicated: int | None, pending_generation: int | None, newest: int | None, expected: int | None
) -> None:
    assert upload_pending(replicated=replicated, pending_generation=pending_generation, newest_local=newest) == expected
    state = _state(replicated, pending_generation)
    assert queue_fields(state, newest)["pending_upload"] == expected
    assert _prune_refuses(state, newest) == expected
