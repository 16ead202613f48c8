"""A power cut anywhere inside a remote pull boots the old checkpoint or the pulled one, never a mixture.

The pull runs against a real S3 server (``rclone serve s3`` on loopback); only its *local* side —
the import into the slot that does not hold the newest good checkpoint (frames copied from the
other slot or downloaded, bundle, commit record, GC) — is recorded on ``RecordingStorage``, and
the crash model of this suite (``crashstates``) is applied to that log: every cut point with all
issued operations persisted and with only the fsync-covered ones, random unsynced drops, ALICE
orderings and torn writes. On every distinct crash image the real boot must yield the node's
newest checkpoint before the pull (generation 2) or the fully pulled one (generation 3) with
its exact bytes; then the same pull is run again on that image and must complete, after which
boot yields generation 3.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.remote.config import RemoteConfig
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.replicate import upload_checkpoint
from appliance.remote.s3 import ObjectStore
from appliance.signing import SigningKey
from appliance.storage.recording import Fsync, FsyncDir, Image, RecordingStorage
from appliance.store.bootstate import SlotStates
from appliance.store.store import Store
from appliance.transfer import ImportResult
from tests.integration.s3server import BUCKET, SKIP_REASON, S3Server, rclone_binary, running_server

from . import counts
from .boot import BOOT
from .checker import CrashChecker
from .crashstates import cuts, orderings, torn, unsynced
from .model import MODEL_ID, History, Keys
from .workloads import Recorded, Recorder

pytestmark = pytest.mark.faults

PATH = "remote pull (import of generation 3 into the inactive slot)"
UNSYNCED_PER_CUT = 3


class Remote:
    def __init__(self, server: S3Server, tmp: Path, keys: Keys, history: History) -> None:
        self.head_key = SigningKey.generate()
        self.config = RemoteConfig(
            endpoint=server.endpoint, bucket=BUCKET, device="node-1",
            credentials=str(server.write_credentials(tmp / "creds.json")), max_attempts=2,
        )  # fmt: skip
        self.objects = ObjectStore(self.config, self.config.device_prefix)
        src = Recorder(keys, history)
        for _ in range(3):  # the same history the node has, one step further
            src.commit()
        opened = src.store.select().opened
        assert opened.generation == 3
        upload_checkpoint(src.store, self.objects, opened, kind="device", name="node-1", sequence=3,
                          keys=[self.head_key])  # fmt: skip

    def pull(self, store: Store) -> ImportResult:
        head = fetch_head(self.objects, [self.head_key.public], kind="device", name="node-1", model=MODEL_ID,
                          last_seen=0, floor=0)  # fmt: skip
        return pull_checkpoint(store, self.objects, head, floor=0)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, keys: Keys, history: History) -> Iterator[Remote]:
    if rclone_binary() is None:
        pytest.skip(SKIP_REASON)
    tmp = tmp_path_factory.mktemp("pull-s3")
    with running_server(tmp / "s3") as server:
        yield Remote(server, tmp, keys, history)


@pytest.fixture(scope="module")
def pulled(remote: Remote, keys: Keys, history: History) -> Recorded:
    node = Recorder(keys, history)
    node.commit()
    node.commit()
    node.contents[3] = history.digest(3)  # what the pulled generation must restore to
    results: list[ImportResult] = []
    rec = node.record(PATH, lambda: results.append(remote.pull(node.store)) or results[-1].generation)
    assert results[0].from_source > 0 and results[0].from_other_slot > 0, "both local and network frames"
    counts.add("write paths", 1)
    counts.add("ops", len(rec.ops))
    counts.add("pull.ops", len(rec.ops))
    assert rec.acked_before == 2 and rec.acks[-1][1] == 3
    return rec


def _rerun_pull(remote: Remote, image: Image, keys: Keys, rec: Recorded) -> tuple[int | None, str | None]:
    storage = RecordingStorage(image)
    BOOT(storage, rec.config, keys.trust)  # the node boots first, as it would after the cut
    store = Store(storage, rec.config, keys.trust)
    store.good_provider = SlotStates(storage).good_generations
    assert remote.pull(store).generation == 3
    after = BOOT(storage, rec.config, keys.trust)
    return after.generation, after.contents


def test_power_cut_mid_pull_boots_the_old_or_the_pulled_checkpoint_never_a_mixture_and_the_pull_resumes(
    remote: Remote, pulled: Recorded, keys: Keys, history: History
) -> None:
    """Every cut point (all issued / only fsynced ops persisted) and random unsynced drops; then rerun the pull."""
    counts.add("cut points", len(pulled.ops) + 1)
    checker = CrashChecker(pulled, keys, history)
    checker.run(cuts(pulled.ops))
    checker.run(unsynced(pulled.ops, UNSYNCED_PER_CUT, random.Random(len(pulled.ops))))
    checker.assert_clean()
    for image, _ in checker.images():
        generation, contents = _rerun_pull(remote, image, keys, pulled)
        counts.add("pull.reruns")
        assert (generation, contents) == (3, history.digest(3)), "the rerun pull did not complete"


def test_reordered_and_torn_writes_mid_pull_keep_the_oracle(pulled: Recorded, keys: Keys, history: History) -> None:
    """ALICE orderings and torn writes of the pull's local log boot generation 2 or 3, exactly."""
    checker = CrashChecker(pulled, keys, history, seed=13)
    checker.run(orderings(pulled.ops))
    checker.run(torn(pulled.ops))
    checker.assert_clean()


def test_harness_catches_a_pull_that_never_syncs(pulled: Recorded, keys: Keys, history: History) -> None:
    """Negative control: the same pull without its fsyncs loses the acknowledged, pulled checkpoint."""
    ops = [op for op in pulled.ops if not isinstance(op, (Fsync, FsyncDir))]
    sabotaged = dataclasses.replace(pulled, ops=ops, acks=[(len(ops), 3)], path=f"{PATH} (sabotaged)")
    checker = CrashChecker(sabotaged, keys, history, tally=False)
    checker.run(cuts(sabotaged.ops))
    counts.add("negative controls caught", bool(checker.violations))
    assert checker.violations, "the crash model failed to notice a pull without fsyncs"
