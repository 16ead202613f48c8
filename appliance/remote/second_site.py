"""Boot's second site: fetch the replica's newest checkpoint when no local one can be served.

Owns: ``SecondSite`` — the callable ``appliance boot`` hands the boot sequence
(``BootContext.second_site``): read and verify the device head (head keys, device name, model,
sequence not below the one seen, generation not below the floor), import its checkpoint into the
inactive slot through ``appliance.transfer`` (every check before bulk data, blobs hashed as read),
emit ``remote.restore_started`` / ``remote.restored`` with the site and each stage's time, and
return what it did. Unreachable or unacceptable: the error propagates and boot enters recovery
mode as before. Boot then walks its candidates again: the fetched checkpoint is served only after
the canary passes (docs/boot.md §7).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from appliance.events import EventLog
from appliance.remote.config import RemoteConfig
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.s3 import ObjectStore
from appliance.remote.state import StateDir
from appliance.signing import PublicKey
from appliance.store.store import Store


class SecondSite:
    def __init__(
        self,
        store: Store,
        remote: RemoteConfig,
        events: EventLog,
        *,
        objects: ObjectStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.remote, self.events, self.clock = store, remote, events, clock
        self._objects = objects

    def __call__(self, floor: int) -> dict[str, Any] | None:
        site = f"{self.remote.bucket}/{self.remote.device_prefix}"
        self.events.emit("remote.restore_started", site=site, endpoint=self.remote.endpoint)
        t0 = self.clock()
        objects = self._objects or ObjectStore(self.remote, self.remote.device_prefix)
        state_dir = StateDir(self.remote.state_dir)
        head = fetch_head(
            objects, [PublicKey.load(p) for p in self.remote.head_trust], kind="device", name=self.remote.device,
            model=self.store.config.model, last_seen=state_dir.seen(objects.prefix), floor=floor,
        )  # fmt: skip
        t1 = self.clock()
        result = pull_checkpoint(self.store, objects, head, floor=floor)
        t2 = self.clock()
        stages = {"head_s": round(t1 - t0, 6), "fetch_s": round(t2 - t1, 6), "total_s": round(t2 - t0, 6)}
        info = {"site": site, "generation": result.generation, "slot": result.slot, "stages": stages,
                **{k: v for k, v in result.to_dict().items() if k not in ("generation", "slot")}}  # fmt: skip
        self.events.emit("remote.restored", **info)
        return None if result.already else info
