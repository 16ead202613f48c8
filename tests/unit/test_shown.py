"""Names from outside are quoted in messages so that what imitates another name is visible (trial 3)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.format.shown import shown

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.embed.weight", "'model.embed.weight'"),
        ("caf\u00e9.json", "'caf\u00e9.json'"),  # NFC and printable: as written
        ("cafe\u0301.json", "'cafe\\u0301.json'"),  # decomposed: the combining accent is visible
        ("a\u200bb", "'a\\u200bb'"),
        ("a\nb", "'a\\nb'"),
    ],
)
def test_a_name_is_quoted_as_written_only_when_it_is_printable_nfc(name: str, expected: str) -> None:
    assert shown(name) == expected


@given(st.text(max_size=200))
def test_a_shown_name_is_one_printable_line_within_its_limit_and_never_passes_a_non_nfc_name_through(
    name: str,
) -> None:
    text = shown(name, 60)
    assert len(text) <= 60 and text.isprintable()
    if unicodedata.normalize("NFC", name) != name:
        assert text.isascii()


@pytest.mark.parametrize(
    ("noun", "expected"),
    [
        ("object", "an object"),
        ("int", "an int"),
        ("Ellipsis", "an Ellipsis"),
        ("uint8", "a uint8"),
        ("list", "a list"),
        ("RSAPrivateKey", "an RSAPrivateKey"),
        ("Ed448PublicKey", "an Ed448PublicKey"),
        ("DSAPrivateKey", "a DSAPrivateKey"),
        ("secp384r1", "a secp384r1"),
    ],
)
def test_type_names_in_messages_get_the_right_article(noun: str, expected: str) -> None:
    """Trial 3: "holds a object"."""
    from appliance.format.shown import a_or_an

    assert a_or_an(noun) == expected
