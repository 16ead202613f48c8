"""Issue 12, kind 1 on a node: the model's own layout and canary shape never condemn a healthy checkpoint.

In process (no supervisord): ``seed`` on a development node, then the model service restores
from the handoff boot would write and answers the canary as boot's health gate would ask it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.boot_commands import seed
from appliance.cli.main import main
from appliance.errors import CanaryInputError
from appliance.format.canary import Canary, check
from appliance.format.handoff import Phase
from appliance.node.config import NodeConfig, load_config
from appliance.service.runtime import ServiceRuntime
from appliance.store.store import Store
from tests.integration.node_fixtures import handoff, with_changes
from tests.integration.test_service_runtime import control_of

pytestmark = pytest.mark.integration


def _node(tmp_path: Path, model: str) -> NodeConfig:
    assert main(["node-init", str(tmp_path / "n"), "--frame-size", "4096"]) == 0
    return with_changes(load_config(tmp_path / "n" / "node.json"), model=f"tests.integration.fixture_models:{model}")


def test_kind1_channels_last_model_with_an_image_canary_restores_and_passes_its_canary(tmp_path: Path) -> None:
    """Regression: seed worked, then the service could not restore into channels_last tensors (BAD, exit 50),
    and /v1/canary refused the (2,3,8,8) image batch with 422 (BAD, recovery)."""
    config = _node(tmp_path, "conv_channels_last")
    seed(config)
    handoff(config)
    runtime = ServiceRuntime(config)
    runtime.bring_up()
    assert runtime.phase is Phase.RESTORED, runtime.error
    metadata = Store.open(config.store).select().opened.verified.manifest.metadata
    canary = Canary.from_metadata(dict(metadata))
    assert canary is not None
    with control_of(runtime) as control:  # boot's health gate asks on the real control channel
        status, body = control.call("POST", "/v1/canary", {"inputs": canary.input})
    assert status == 200, body
    assert check(canary, body["outputs"]).ok


def test_kind1_canary_endpoint_refuses_what_the_model_cannot_take_with_422(tmp_path: Path) -> None:
    config = _node(tmp_path, "conv_channels_last")
    seed(config)
    handoff(config)
    runtime = ServiceRuntime(config)
    runtime.bring_up()
    with control_of(runtime) as control:
        assert control.call("POST", "/v1/canary", {"inputs": [[1.0, 2.0]]})[0] == 422  # boot: a model fault
        assert control.call("POST", "/v1/canary", {"inputs": [[[["x"]]]]})[0] == 422  # only numbers, as before


def test_kind1_seed_refuses_a_canary_the_model_cannot_take(tmp_path: Path) -> None:
    config = _node(tmp_path, "refuses_its_canary")
    with pytest.raises(CanaryInputError, match="cannot take its own canary input") as caught:
        seed(config)
    assert caught.value.exit_code == 19
    assert Store.open(config.store).log() == []  # nothing committed


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("nan_canary", "NaN or Infinity"),
        ("scalar_canary", "rank 1..8, not rank 0"),
        ("rank9_canary", "not rank 9"),
        ("scalar_answer", "answer must be a .nested. list of rank 1..8, not rank 0"),
        ("rank9_answer", "answer .* not rank 9"),
    ],
)
def test_kind1_seed_refuses_a_canary_boot_could_not_check_with_the_canary_code(
    tmp_path: Path, model: str, says: str
) -> None:
    """Regression (new-user trial): these exited 34 ("damaged manifest"), 41 (quarantine) or seeded at all."""
    config = _node(tmp_path, model)
    with pytest.raises(CanaryInputError, match=says) as caught:
        seed(config)
    assert caught.value.exit_code == 19
    assert Store.open(config.store).log() == []


def test_seed_says_a_canary_answer_that_is_not_a_tensor_is_the_models_output_not_its_input(tmp_path: Path) -> None:
    """New-user trial: a forward() that returns a dict (as a Hugging Face ModelOutput) got "AttributeError: 'dict'
    object has no attribute 'tolist'" and the input-side remedy; the output is the problem."""
    config = _node(tmp_path, "dict_answer")
    with pytest.raises(CanaryInputError, match="answered its canary input with a dict, not a tensor") as caught:
        seed(config)
    assert caught.value.exit_code == 19
    remedy = caught.value.remedy
    assert "forward() return a tensor" in remedy and "logits" in remedy and "canary_input()" not in remedy
    assert Store.open(config.store).log() == []
