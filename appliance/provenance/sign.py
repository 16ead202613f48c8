"""Write an OpenSSF model-signing signature (``model.sig``) over a restored model directory.

Owns: ``sign_directory``. Does not own restoring the directory (``appliance.sources.model_dir``)
or the key files (``appliance.signing.keys``). The signature is made by the ``model_signing``
library itself (``signing.Config().use_elliptic_key_signer``), with the settings of
``model_signing sign key DIR --private_key KEY`` (file serialization, SHA-256, ``model.sig``
and git files ignored, symlinks refused), so the stock ``model_signing verify key DIR
--signature DIR/model.sig --public_key KEY.pub`` accepts it. The key is an ECDSA P-256 key
(``appliance keygen --type ecdsa-p256``), the type the trust store also accepts for checkpoints.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import KeyFileError, KeyPermissionError, UsageError
from appliance.format.provenance import MODEL_SIG
from appliance.provenance.vendors import key_sha256, load_ec_public_key
from appliance.provenance.verify import library
from appliance.signing.keys import ECDSA_P256, SigningKey

SIGN_MODEL_KEY_REMEDY = (
    "sign with an ECDSA P-256 private key (OpenSSF model-signing verifies ECDSA keys only): create one with "
    "`appliance keygen KEYFILE --type ecdsa-p256`, or pass an existing PEM PKCS#8 P-256 key"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedDirectory:
    path: Path  # the model.sig written
    subject_name: str
    subject_sha256: str  # model_signing's root digest over the per-file digests
    resources: int
    key_sha256: str  # model_signing's key hint: SHA-256 of the PEM public key
    signer: str  # library and version

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_sig": str(self.path),
            "subject": {"name": self.subject_name, "sha256": self.subject_sha256},
            "resources": self.resources,
            "key_sha256": self.key_sha256,
            "signer": self.signer,
        }


def check_signing_key(key_file: Path) -> SigningKey:
    """The ECDSA P-256 key in ``key_file``, with the library present; checked before anything is written."""
    try:
        key = SigningKey.load(key_file)  # the same checks as any signing key (format, and type below)
    except KeyPermissionError:
        raise
    except KeyFileError as exc:
        needs = "model-signing needs an ECDSA P-256 private key (`appliance keygen KEYFILE --type ecdsa-p256`)"
        remedy = f"{exc.remedy}; {needs}"
        raise KeyFileError(exc.problem, remedy=remedy) from exc
    if key.type != ECDSA_P256:
        raise KeyFileError(
            f"{key_file} is an {key.type} key; OpenSSF model-signing verifies ECDSA keys only",
            remedy=SIGN_MODEL_KEY_REMEDY,
        )
    library()
    return key


def sign_directory(directory: Path, key_file: Path) -> SignedDirectory:
    """Sign every file of ``directory`` into ``directory/model.sig`` with the ECDSA key in ``key_file``."""
    key = check_signing_key(key_file)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; model.sig is written over a restored directory")
    target = directory / MODEL_SIG
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} already exists", remedy="restore into a new, empty directory")
    lib, version = library()
    hashing = lib.hashing.Config().set_ignored_paths(paths=[Path(MODEL_SIG)], ignore_git_paths=True)
    config = lib.signing.Config().use_elliptic_key_signer(private_key=key_file)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        config.set_hashing_config(hashing.set_allow_symlinks(False)).sign(directory, target)
    if printed.getvalue().strip():
        log.warning("model_signing: %s", printed.getvalue().strip())
    statement = json.loads(base64.b64decode(json.loads(target.read_bytes())["dsseEnvelope"]["payload"]))
    (subject,) = statement["subject"]
    public = load_ec_public_key(key.public.to_pem(), str(key_file))
    return SignedDirectory(
        path=target,
        subject_name=str(subject["name"]),
        subject_sha256=str(subject["digest"]["sha256"]),
        resources=len(statement["predicate"]["resources"]),
        key_sha256=key_sha256(public),
        signer=version,
    )
