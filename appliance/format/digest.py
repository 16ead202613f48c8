"""SHA-256 digests as a value type; the only way a name read from disk becomes an address.

Owns: parsing and validating hex digests. Stored frames are *addressed only* by a validated
``Digest`` (``^[0-9a-f]{64}$``), never by a name taken from a manifest, so no manifest content
can form a path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from appliance.errors import IntegrityError, ManifestError

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A lowercase hex SHA-256. Law: ``Digest.parse(str(d)) == d``."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or _HEX64.fullmatch(self.hex) is None:
            raise ManifestError(f"not a lowercase hex SHA-256 digest: {self.hex!r:.80}")

    @classmethod
    def parse(cls, value: object, what: str = "digest", error: type[IntegrityError] = ManifestError) -> Digest:
        if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
            raise error(f"{what} is not a lowercase hex SHA-256 digest: {value!r:.80}")
        return cls(value)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return self.hex
