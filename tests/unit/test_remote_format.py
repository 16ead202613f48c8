"""Head records, their envelopes, the anti-replay rule and the backoff, over their input spaces."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import HeadError
from appliance.format.portable import BundleName
from appliance.format.remote import (
    HeadRecord,
    backoff_delay,
    check_head_fresh,
    envelope_bytes,
    parse_envelope,
    parse_head_payload,
)
from appliance.remote.head import sign_head, verify_head
from appliance.signing import SigningKey
from tests.unit.factories import digest

pytestmark = pytest.mark.unit


def _head(sequence: int = 5, generation: int = 5, **kw: object) -> HeadRecord:
    fields: dict[str, object] = {
        "kind": "device", "name": "node-1", "model": "m", "sequence": sequence, "generation": generation,
        "bundle": BundleName(generation, digest("b")), "manifest_digest": digest("m"), "issued": "2026-12-04T00:00:00Z",
    }  # fmt: skip
    fields.update(kw)
    return HeadRecord(**fields)  # type: ignore[arg-type]


def test_signed_head_round_trips_and_binds_every_field() -> None:
    key = SigningKey.generate()
    head = _head()
    assert verify_head(sign_head(head, [key]), [key.public]) == head


def test_head_signed_by_another_key_or_altered_is_refused() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    data = sign_head(_head(), [key])
    with pytest.raises(HeadError, match="does not accept"):
        verify_head(data, [other.public])
    env = parse_envelope(data)
    altered = envelope_bytes(env.payload.replace(b'"sequence":5', b'"sequence":6'), list(env.signatures))
    with pytest.raises(HeadError, match="forged"):
        verify_head(altered, [key.public])


@given(st.binary(max_size=300))
def test_any_bytes_are_a_head_error_or_a_head(data: bytes) -> None:
    with contextlib.suppress(HeadError):  # anything else (a crash, another error type) fails the test
        assert isinstance(parse_head_payload(parse_envelope(data).payload), HeadRecord)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [({"kind": "channel"}, "expected device"), ({"name": "node-2"}, "expected device"), ({"model": "x"}, "model"),
     ({"sequence": 3, "generation": 3}, "replayed"), ({"sequence": 9, "generation": 1}, "floor")],
)  # fmt: skip
def test_check_head_fresh_refuses_replays_and_wrong_bindings(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(HeadError, match=needle):
        check_head_fresh(_head(**kw), kind="device", name="node-1", model="m", last_seen=4, floor=2)


def test_check_head_fresh_accepts_the_same_or_newer() -> None:
    for seq in (4, 5):
        check_head_fresh(_head(sequence=seq, generation=seq), kind="device", name="node-1", model="m",
                         last_seen=4, floor=2)  # fmt: skip


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(1, 1000), st.floats(0, 1, exclude_max=True))
def test_backoff_is_bounded_by_the_cap_and_grows_with_attempts(attempt: int, base: float, cap: float, r: float) -> None:
    d = backoff_delay(attempt, base=base, cap=cap, rand=r)
    assert 0 <= d <= min(cap, base * 2 ** min(attempt - 1, 62)) + 1e-9


def test_shipped_replicate_program_is_the_rendered_section() -> None:
    from pathlib import Path

    from appliance.remote.supervisord import production, render_program

    shipped = (Path(__file__).parents[2] / "systemd" / "supervisord-replicate.conf").read_text()
    assert shipped == render_program(production())
    assert "user=appliance-replicate" in shipped and "--remote /etc/appliance/remote.json" in shipped


def test_shipped_channel_program_is_the_rendered_section_and_only_rendered_with_a_channel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    import json
    from pathlib import Path

    from appliance.remote.supervisord import channel_section, production_channel, render_channel

    shipped = (Path(__file__).parents[2] / "systemd" / "supervisord-channel.conf").read_text()
    assert shipped == render_channel(production_channel())
    # its own user (it parses network input), never the store's writer (docs/design.md §7.2)
    assert "user=appliance-channel" in shipped and "--state-dir /var/lib/appliance-channel" in shipped
    remote = tmp_path / "remote.json"
    program = dataclasses.replace(production_channel(), remote=str(remote))
    assert channel_section(program) == ""  # no remote.json
    cfg = {"format": "appliance.remote", "version": 1, "endpoint": "http://127.0.0.1:9", "bucket": "bkt",
           "device": "node-1", "credentials": str(tmp_path / "creds.json")}  # fmt: skip
    remote.write_text(json.dumps(cfg))
    assert channel_section(program) == ""  # a remote without a channel
    remote.write_text(json.dumps({**cfg, "channel": "stable"}))
    assert channel_section(program).startswith("[program:channel]")
