"""decode_enriched on hostile record values: every refusal is a DecodeError naming why,
which the filter stage dead-letters (never an exception of another kind)."""

from __future__ import annotations

import pytest

from broker.enrich.enriched import decode_enriched
from broker.errors import DecodeError


@pytest.mark.parametrize("value, why", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": NaN}', "not JSON"),
    (b'{"a": "\xff"}', "not JSON"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"a": "\\ud800"}', "schema tag"),
    (b"[1, 2]", "expected an object"),
])
def test_hostile_values_are_decode_errors(value, why):
    with pytest.raises(DecodeError, match=why):
        decode_enriched(value)
