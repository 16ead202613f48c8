"""A node for object-store tests: a store, its replicator and a pull helper over one bucket prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from appliance import api
from appliance.events import EventLog
from appliance.remote.config import RemoteConfig
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.replicate import Replicator
from appliance.remote.s3 import ObjectStore
from appliance.remote.state import StateDir
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.s3server import S3Server


class Node:
    """A store, its replicator and a pull helper, sharing one bucket prefix (the node's device name)."""

    def __init__(
        self,
        tmp: Path,
        server: S3Server,
        key: SigningKey,
        head_key: SigningKey,
        name: str = "node",
        *,
        endpoint: str | None = None,
        frame_size: int = 4096,
        **remote: Any,
    ) -> None:
        self.tmp, self.server, self.key, self.head_key = tmp, server, key, head_key
        self.store = Store.init(tmp / name, [key.public], StoreConfig(model="test-model", frame_size=frame_size))
        head_pub = tmp / "head.pub"
        if not head_pub.exists():
            head_pub.write_bytes(head_key.public.to_pem())
        settings: dict[str, Any] = {"retry_base": 0.01, "retry_cap": 0.05, "max_attempts": 2, "connect_timeout": 1.0,
                                    "read_timeout": 5.0, **remote}  # fmt: skip
        self.config = RemoteConfig(
            endpoint=endpoint or server.endpoint, bucket="appliance-test", device="node-1",
            credentials=str(server.write_credentials(tmp / "creds.json")), head_trust=(str(head_pub),),
            state_dir=str(tmp / f"{name}-state"), **settings,
        )  # fmt: skip
        self.objects = ObjectStore(self.config, self.config.device_prefix)
        self.events = tmp / f"{name}-events.jsonl"
        self.replicator = Replicator(
            self.store, self.objects, device="node-1", keys=[head_key], state_dir=StateDir(self.config.state_dir),
            events=EventLog(self.events, "replicate", journal=None), retry_base=0.01, retry_cap=0.05,
        )  # fmt: skip

    def save(self, state: dict[str, torch.Tensor]) -> None:
        api.save(self.store, state, self.key)

    def pull_head(self, last_seen: int = 0, floor: int = 0) -> Any:
        """What ``appliance remote status`` asks the bucket: the verified head."""
        return fetch_head(self.objects, [self.head_key.public], kind="device", name="node-1",
                          model="test-model", last_seen=last_seen, floor=floor)  # fmt: skip

    def pull(self, last_seen: int = 0, floor: int = 0) -> Any:
        return pull_checkpoint(self.store, self.objects, self.pull_head(last_seen, floor), floor=floor)

    def bucket(self) -> Path:
        return self.server.bucket_dir() / self.config.device_prefix

    def snapshot(self) -> dict[str, bytes]:
        root = Path(str(getattr(self.store.storage, "root")))
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("[AB]/checkpoints/*"))}
