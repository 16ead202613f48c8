"""Rollback respects key roles and lineage (issues 10 and 14): a target or a re-signature the current trust
store would not accept is refused before anything is written, and the console shows why.

Node: this node's key is the device key of ``dev-1`` (node.json ``device_id``), a release key ``R`` may sign
the model, and a fleet trust file also lists ``dev-2``'s device key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance import api
from appliance.cli.main import main
from appliance.console import operations as ops
from appliance.errors import ActionRefusedError
from appliance.node.config import load_config
from appliance.node.identity import open_node_store
from appliance.signing import SigningKey, TrustStore
from appliance.signing.trust import DEVICE, RELEASE
from appliance.store.store import Store
from tests.console.conftest import Node

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Roles:
    node: Node
    release: SigningKey
    other: SigningKey
    model: str
    tensors: dict[str, Any]

    @property
    def config(self) -> Any:
        return load_config(self.node.config_path)

    def commit(self, key: SigningKey, *, extra: bool = False, scoped: bool = True) -> int:
        store = open_node_store(self.config) if scoped else Store.open(self.config.store)
        tensors = dict(self.tensors)
        if extra:
            tensors["injected.weight"] = next(iter(tensors.values())).clone()
        result = api.save(store, tensors, key, {"by": key.public.keyid[:8]})
        return int(result.generation)

    def set_release_models(self, models: tuple[str, ...]) -> None:
        store = open_node_store(self.config)
        trust = store.trust.with_role(self.release.public.keyid, RELEASE, models=models)
        store.save_trust(trust)


def _tensors(config: Any) -> dict[str, Any]:
    store = Store.open(config.store)
    return dict(api.load(store, generation=max(e["generation"] for e in store.log() if "error" not in e)).tensors)


@pytest.fixture
def roles(node: Node) -> Roles:
    config = load_config(node.config_path)
    tensors = _tensors(config)  # the seeded content (role-less signatures, about to lose their trust)
    node_key = SigningKey.load(config.signing_key)
    release, other = SigningKey.generate(), SigningKey.generate()
    store = Store.open(config.store)
    trust = TrustStore().with_key(release.public, "vendor", role=RELEASE, models=(store.config.model,))
    trust = trust.with_key(node_key.public, "this node", role=DEVICE, device="dev-1")
    trust = trust.with_key(other.public, "another node", role=DEVICE, device="dev-2")
    store.save_trust(trust)
    node.config_path.write_bytes(dataclasses.replace(config, device_id="dev-1").to_bytes())
    return Roles(node, release, other, store.config.model, tensors)


def _gen(node: Node, generation: int) -> list[str]:
    return ["tech", "rollback", str(generation), "--no-restart", "--config", str(node.config_path),
            "--technician", "erin", "--json"]  # fmt: skip


def test_rollback_to_a_release_is_resigned_by_this_devices_key_with_lineage(roles: Roles) -> None:
    base = roles.commit(roles.release)
    own = roles.commit(SigningKey.load(roles.config.signing_key))
    assert ops.rollback_plan(roles.config, base).allowed
    data = ops.rollback(roles.config, "erin", base, restart=False)
    new = data["committed"]["generation"]
    opened = open_node_store(roles.config).select(new).opened
    assert new > own and opened.authorization.role == "device" and opened.authorization.device == "dev-1"
    assert opened.authorization.release_base.generation == base


def test_rollback_across_a_release_that_changed_the_tensor_layout_is_refused(roles: Roles) -> None:
    """The device key could only sign it as a descendant of the newest release, whose layout differs."""
    old = roles.commit(roles.release)
    roles.commit(roles.release, extra=True)  # a new release adds a tensor
    plan = ops.rollback_plan(roles.config, old)
    assert not plan.allowed and "tensor layout" in str(plan.refusal) and "LineageError" in str(plan.refusal)
    before = [e["generation"] for e in open_node_store(roles.config).log()]
    with pytest.raises(ActionRefusedError, match="tensor layout"):
        ops.rollback(roles.config, "erin", old, restart=False)
    assert [e["generation"] for e in open_node_store(roles.config).log()] == before


def test_rollback_to_a_target_whose_release_signer_lost_its_role_is_refused(
    roles: Roles, capsys: pytest.CaptureFixture[str]
) -> None:
    target = roles.commit(roles.release)
    roles.commit(roles.release)
    roles.set_release_models(("another-model",))  # the vendor's key no longer signs this model
    plan = ops.rollback_plan(roles.config, target)
    assert not plan.allowed and "RoleError" in str(plan.refusal)
    assert main(_gen(roles.node, target)) == 83
    assert "RoleError" in capsys.readouterr().out


def test_rollback_to_a_target_signed_by_another_devices_key_is_refused(roles: Roles) -> None:
    roles.commit(roles.release)
    planted = roles.commit(roles.other, scoped=False)  # valid for dev-2; planted on dev-1's disk
    roles.commit(roles.release, scoped=False)  # (written as dev-2 would: its retention keeps the planted one)
    plan = ops.rollback_plan(roles.config, planted)
    assert not plan.allowed and "ForeignDeviceKeyError" in str(plan.refusal)


def test_console_confirmation_page_shows_the_role_refusal(roles: Roles, tmp_path: Path) -> None:
    from tests.console.test_console_web import client, login

    old = roles.commit(roles.release)
    roles.commit(roles.release, extra=True)
    c = client(roles.node)
    login(c)
    page = c.get(f"/actions/rollback?generation={old}").text
    assert "tensor layout" in page
