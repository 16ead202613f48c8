"""Signing edge: Ed25519 keys, the trust store, and ``verify_bundle -> VerifiedManifest``.

Owns: all use of ``cryptography``. Does not own: the signed byte layout (``appliance.format``)
or where key and trust files live (the store and CLI decide). Torch-free.
"""

from appliance.signing.keys import PublicKey, SigningKey
from appliance.signing.lineage import Authorization, ReleaseBase, authorize, lineage_for_commit
from appliance.signing.trust import TrustedKey, TrustStore
from appliance.signing.verify import VerifiedManifest, sign_manifest, verify_bundle

__all__ = [
    "Authorization",
    "PublicKey",
    "ReleaseBase",
    "SigningKey",
    "TrustStore",
    "TrustedKey",
    "VerifiedManifest",
    "authorize",
    "lineage_for_commit",
    "sign_manifest",
    "verify_bundle",
]
