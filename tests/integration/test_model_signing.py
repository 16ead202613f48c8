"""OpenSSF model-signing on import: the real ``model_signing`` signer signs, our commit verifies with the real library.

A directory signed with ``model_signing sign key|certificate`` is committed only when its
``model.sig`` verifies against a vendor of the store; the vendor identity and signed digest are
recorded in the signed manifest and shown by ``log``/``status``. Altered shards, foreign keys,
foreign CAs and unsigned directories under ``require on`` are refused with exit 47, before a
single frame is written.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from safetensors.torch import save_file

from appliance.cli.main import main
from appliance.errors import ModelSigningUnavailableError, VendorSignatureError, VendorTrustError
from appliance.provenance import VendorTrust, check_source
from appliance.store.store import Store
from tests.integration.conftest import weights

pytestmark = pytest.mark.integration
model_signing = pytest.importorskip("model_signing", reason="the model-signing extra is not installed")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def model_signing_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The stock model_signing command line, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def ec_pair(tmp: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[ec.EllipticCurvePrivateKey, Path, Path]:  # fmt: skip
    key = ec.generate_private_key(curve or ec.SECP256R1())
    priv, pub = tmp / f"{name}.pem", tmp / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return key, priv, pub


def model_dir(tmp: Path) -> Path:
    d = tmp / "tiny-model"
    d.mkdir()
    state = weights(3, n=4096)
    save_file({"w": state["w"]}, str(d / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({"v": state["v"], "step": state["step"]}, str(d / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors", "step": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_text('{"model_type": "tiny"}')
    return d


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    key, root = tmp_path / "k", tmp_path / "store"
    assert main(["keygen", str(key), "--json"]) == 0
    assert main(["init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096", "--json"]) == 0
    capsys.readouterr()
    _, vendor_priv, vendor_pub = ec_pair(tmp_path, "vendor")
    model = model_dir(tmp_path)
    signed = model_signing_cli("sign", "key", str(model), "--private_key", str(vendor_priv), "--signature", str(model / "model.sig"))  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    return {"key": key, "root": root, "model": model, "vendor_priv": vendor_priv, "vendor_pub": vendor_pub}


def subject_digest(sig: Path) -> str:
    statement = json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))
    return str(statement["subject"][0]["digest"]["sha256"])


def test_a_vendor_signed_directory_is_verified_and_its_provenance_is_signed_into_the_manifest_and_shown(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, model = str(env["root"]), env["model"]
    assert run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))[0] == 0
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 0, out
    prov = out["provenance"]
    assert prov["subject"] == {"name": "tiny-model", "sha256": subject_digest(model / "model.sig")}
    assert prov["signer"]["vendor"] == "acme" and prov["signer"]["method"] == "key"
    assert prov["resources"] == 4 and prov["verifier"].startswith("model_signing 1.1")
    code, log = run(capsys, "log", root)
    assert log["checkpoints"][0]["provenance"]["subject"]["sha256"] == prov["subject"]["sha256"]
    code, status = run(capsys, "status", root)
    assert status["newest_valid"]["provenance"]["signer"]["vendor"] == "acme"
    main(["log", root])
    assert "vendor: signed by acme (key " in capsys.readouterr().out
    code, verified = run(capsys, "verify", root, "--deep")
    assert code == 0 and verified["ok"]  # the provenance is covered by our own (Ed25519) manifest signature
    manifest = Store.open(root).select().opened.verified.manifest
    assert manifest.version == 2 and manifest.provenance is not None
    assert [a.path for a in manifest.assets] == ["config.json"]  # the vendor's model.sig is provenance, not an asset


def test_an_altered_shard_is_refused_with_exit_47_like_model_signing_verify_and_nothing_is_committed(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    shard = model / "model-00002-of-00002.safetensors"
    _flip_byte(shard)  # one bit of tensor data
    stock = model_signing_cli("verify", "key", str(model), "--signature", str(model / "model.sig"), "--public_key", str(env["vendor_pub"]))  # fmt: skip
    assert stock.returncode != 0 and "model-00002-of-00002.safetensors" in stock.stderr + stock.stdout
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == VendorSignatureError.exit_code == 47
    assert out["error"] == "VendorSignatureError" and "model-00002-of-00002.safetensors" in out["problem"]
    assert "obtain the model again" in out["remedy"] and "remove" not in out["remedy"]  # no bypass read into it
    assert run(capsys, "log", root)[1]["checkpoints"] == []


def test_a_signature_by_another_key_is_refused(env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    root = str(env["root"])
    _, _, other_pub = ec_pair(tmp_path, "other", ec.SECP384R1())
    assert run(capsys, "vendor", root, "add", "other", "--key", str(other_pub))[0] == 0
    code, out = run(capsys, "commit", root, str(env["model"]), "--key", str(env["key"]))
    assert code == 47 and "vendor 'other'" in out["problem"] and "remove" not in out["remedy"]


def test_a_signed_directory_is_refused_when_the_store_trusts_no_vendor_never_silently_dropped(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "commit", str(env["root"]), str(env["model"]), "--key", str(env["key"]))
    assert code == 47 and "trusts no vendor" in out["problem"] and "vendor" in out["remedy"]


def test_require_on_refuses_unsigned_directories_and_single_files_and_off_accepts_them(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    assert run(capsys, "vendor", root, "require", "on")[1]["require_signature"] is True
    (model / "model.sig").unlink()
    single = tmp_path / "single.safetensors"
    save_file(weights(1, n=1024), str(single))
    for source in (model, single):
        code, out = run(capsys, "commit", root, str(source), "--key", str(env["key"]))
        assert code == 47 and "requires a vendor signature" in out["problem"], out
    code, status = run(capsys, "status", root)
    assert status["vendors"] == {"require_signature": True, "names": ["acme"]}
    run(capsys, "vendor", root, "require", "off")
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 0 and "provenance" not in out


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),  # fmt: skip
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def test_a_certificate_signed_directory_verifies_against_the_vendor_chain_and_records_the_certificate(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, model = str(env["root"]), env["model"]
    ca_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Acme Root CA", ca_key, "Acme Root CA", ca_key, ca=True)
    leaf = _cert("Acme Model Release", leaf_key, "Acme Root CA", ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    (model / "model.sig").unlink()
    signed = model_signing_cli("sign", "certificate", str(model), "--private_key", str(tmp_path / "leaf.key"), "--signing_certificate", str(tmp_path / "leaf.pem"), "--certificate_chain", str(tmp_path / "ca.pem"), "--signature", str(model / "model.sig"))  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    other_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other-ca.pem").write_bytes(_cert("Other CA", other_key, "Other CA", other_key, ca=True).public_bytes(serialization.Encoding.PEM))  # fmt: skip
    run(capsys, "vendor", root, "add", "other", "--cert-chain", str(tmp_path / "other-ca.pem"))
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 47, out  # a chain from another CA does not vouch for it
    assert_readable(out["problem"])
    assert "certificate chain of vendor 'other'" in out["problem"], out
    run(capsys, "vendor", root, "add", "acme", "--cert-chain", str(tmp_path / "ca.pem"))
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 0, out
    signer = out["provenance"]["signer"]
    assert signer["vendor"] == "acme" and signer["method"] == "certificate"
    assert signer["subject"] == "CN=Acme Model Release" and signer["issuer"] == "CN=Acme Root CA"
    assert signer["certificate_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()


def test_vendor_keys_must_be_ec_p256_or_p384(env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    root = str(env["root"])
    ed = tmp_path / "ed.pub"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    _, _, p521 = ec_pair(tmp_path, "p521", ec.SECP521R1())
    for pub in (ed, p521, env["vendor_priv"]):
        code, out = run(capsys, "vendor", root, "add", "x", "--key", str(pub))
        assert code == VendorTrustError.exit_code == 27, out
    assert run(capsys, "vendor", root)[1]["vendors"] == []


def test_without_the_model_signing_library_a_signed_import_fails_with_exit_28(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault-injection seam: the library is made unimportable, as on a node without the extra."""
    from appliance.provenance.vendors import Vendor

    vendors = VendorTrust((Vendor("acme", public_key=env["vendor_pub"].read_bytes()),))
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(ModelSigningUnavailableError) as caught:
        check_source(env["model"], vendors)
    assert caught.value.exit_code == 28 and "appliance[model-signing]" in caught.value.remedy


def test_restore_writes_a_model_sig_that_stock_model_signing_verify_key_accepts_and_that_round_trips(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ecdsa, root = tmp_path / "release", tmp_path / "store-ecdsa"
    code, made = run(capsys, "keygen", str(ecdsa), "--type", "ecdsa-p256")
    assert code == 0 and made["type"] == "ecdsa-p256"
    init = ["init", str(root), "--trust", f"{ecdsa}.pub", f"{env['key']}.pub", "--model", "m", "--frame-size", "4096"]
    assert run(capsys, *init)[0] == 0  # an ECDSA P-256 key trusted alongside an Ed25519 key
    run(capsys, "vendor", str(root), "add", "acme", "--key", str(env["vendor_pub"]))
    assert run(capsys, "commit", str(root), str(env["model"]), "--key", str(ecdsa))[0] == 0  # ECDSA-signed checkpoint
    out_dir = tmp_path / "restored"
    code, restored = run(capsys, "restore", str(root), "--out", f"{out_dir}/", "--sign-model", str(ecdsa))
    assert code == 0, restored
    assert restored["model_sig"]["resources"] == len([p for p in out_dir.iterdir() if p.name != "model.sig"])
    stock = model_signing_cli("verify", "key", str(out_dir), "--signature", str(out_dir / "model.sig"), "--public_key", f"{ecdsa}.pub")  # fmt: skip
    assert stock.returncode == 0 and "Verification succeeded" in stock.stdout, stock.stderr
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=f"{ecdsa}.pub").verify(out_dir, out_dir / "model.sig")  # fmt: skip
    # ... and back: the restored, signed directory imports into a store that trusts that key as a vendor
    other = tmp_path / "store-2"
    run(capsys, "init", str(other), "--trust", f"{env['key']}.pub", "--model", "m", "--frame-size", "4096")
    run(capsys, "vendor", str(other), "add", "node", "--key", f"{ecdsa}.pub")
    code, imported = run(capsys, "commit", str(other), str(out_dir), "--key", str(env["key"]))
    assert code == 0 and imported["provenance"]["subject"]["sha256"] == restored["model_sig"]["subject"]["sha256"]
    shard = next(out_dir.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x80
    shard.write_bytes(bytes(data))
    stock = model_signing_cli("verify", "key", str(out_dir), "--signature", str(out_dir / "model.sig"), "--public_key", f"{ecdsa}.pub")  # fmt: skip
    assert stock.returncode != 0 and shard.name in stock.stderr + stock.stdout
    assert run(capsys, "commit", str(other), str(out_dir), "--key", str(env["key"]))[0] == 47


def test_sign_model_needs_an_ecdsa_key_and_a_directory(env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    root = str(env["root"])
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    assert run(capsys, "commit", root, str(env["model"]), "--key", str(env["key"]))[0] == 0
    code, out = run(capsys, "restore", root, "--out", f"{tmp_path / 'd'}/", "--sign-model", str(env["key"]))
    assert code == 11 and "ECDSA" in out["problem"] and "--type ecdsa-p256" in out["remedy"]
    assert not (tmp_path / "d").exists()  # refused before anything was restored
    ecdsa = tmp_path / "e"
    run(capsys, "keygen", str(ecdsa), "--type", "ecdsa-p256")
    code, out = run(capsys, "restore", root, "--out", str(tmp_path / "f.safetensors"), "--sign-model", str(ecdsa))
    assert code == 10 and "directory" in out["problem"]


@pytest.mark.parametrize("changed", ["config.json", "model-00002-of-00002.safetensors"])
def test_a_file_changed_after_the_vendor_check_is_never_committed_as_vendor_signed(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, changed: str
) -> None:
    """Attack (new-user trial): flip a signed file between the signature check and the read; the commit
    said "vendor signature verified" over a config.json the vendor never signed."""
    import appliance.provenance as provenance

    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    verified = provenance.check_source

    def then_flip(source: Path, vendors: object) -> object:
        result = verified(source, vendors)  # type: ignore[arg-type]
        path = model / changed
        data = bytearray(path.read_bytes())
        data[-2] ^= 0x01  # same size, other bytes: only the identity tells
        path.write_bytes(bytes(data))
        return result

    monkeypatch.setattr(provenance, "check_source", then_flip)
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 20 and out["error"] == "SourceChangedError" and "vendor signature" in out["problem"], out
    assert run(capsys, "log", root)[1]["checkpoints"] == []


def test_an_asset_flipped_through_a_shared_mapping_after_the_check_is_refused_against_the_signed_digest(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second trial: a shared-mmap write leaves the file's identity as it was; the commit compares every
    asset as read with the SHA-256 the vendor signed."""
    import mmap
    import time

    import appliance.provenance as provenance

    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    config = model / "config.json"
    with config.open("r+b") as f, mmap.mmap(f.fileno(), 0) as shared:
        original = bytes(shared)
        shared[:] = original  # dirty every page before the check: later writes leave the timestamps alone
        time.sleep(0.1)
        verified = provenance.check_source

        def then_flip(source: Path, vendors: object) -> object:
            result = verified(source, vendors)  # type: ignore[arg-type]
            shared[:] = original.replace(b"tiny", b"huge")
            return result

        monkeypatch.setattr(provenance, "check_source", then_flip)
        code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 20 and out["error"] == "SourceChangedError", out
    assert run(capsys, "log", root)[1]["checkpoints"] == []


@pytest.mark.parametrize("where", ["tensor bytes", "header metadata"])
def test_a_vendor_signed_shard_flipped_through_a_shared_mapping_before_the_first_read_is_refused_against_the_signed_digest(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Residual of the second trial (design §6.2.1): a shard changed through a shared mapping between the
    vendor check and the commit's first read is read consistently (the frames' second read agrees), so only
    the digest model.sig lists for the file can tell. The commit hashes each signed shard whole (the header
    as parsed and the tensor bytes of its second read) and refuses with exit 20; nothing is left behind."""
    import mmap
    import time

    import appliance.provenance as provenance

    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    before = {p for p in env["root"].rglob("*") if p.is_file()}
    shard = model / "model-00001-of-00002.safetensors"  # metadata {"format": "pt"}, tensor "w"
    with shard.open("r+b") as f, mmap.mmap(f.fileno(), 0) as shared:
        original = bytes(shared)
        shared[:] = original  # dirty every page before the check: later writes leave the timestamps alone
        time.sleep(0.1)
        if where == "tensor bytes":
            changed = original[:-4] + bytes(b ^ 0x5A for b in original[-4:])
        else:  # same length: the offsets still hold, only the recorded header metadata differs
            changed = original.replace(b'"format":"pt"', b'"format":"tf"')
        assert changed != original and len(changed) == len(original)
        verified = provenance.check_source

        def then_flip(source: Path, vendors: object) -> object:
            result = verified(source, vendors)  # type: ignore[arg-type]
            shared[:] = changed  # before open_model: the commit reads this version, twice, consistently
            return result

        monkeypatch.setattr(provenance, "check_source", then_flip)
        code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 20 and out["error"] == "SourceChangedError", out
    assert "model-00001-of-00002.safetensors" in out["problem"] and "vendor signed" in out["problem"], out
    assert run(capsys, "log", root)[1]["checkpoints"] == []
    assert {p for p in env["root"].rglob("*") if p.is_file() and p.name != "lock"} <= before  # frames removed


def test_an_untouched_vendor_signed_directory_still_commits_with_its_shards_read_again_whole(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Control for the whole-file check: the same directory, untouched, commits, and its tensors restore."""
    from safetensors.torch import load_file

    from appliance import api

    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 0 and out["provenance"]["signer"]["vendor"] == "acme", out
    loaded = api.load(Store.open(root)).tensors
    for shard in model.glob("*.safetensors"):
        for name, tensor in load_file(str(shard)).items():
            assert loaded[name].equal(tensor)


def assert_readable(problem: str) -> None:
    """No raw library text: no byte reprs, no bare exception names or empty reasons (trial 3)."""
    for raw in ("b'", 'b"', "b\\'", "Digest(", "KeyError", "ValidationError", "JSONDecodeError", "UnicodeDecodeError"):
        assert raw not in problem, (raw, problem)
    assert ": ]" not in problem and not problem.rstrip().endswith(":"), problem
    assert "InvalidSignature: ]" not in problem and "InvalidSignature: no" not in problem, problem


def _sig(model: Path) -> dict[str, Any]:
    return json.loads((model / "model.sig").read_text())


def _flip_byte(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _tamper_file(model: Path, tmp: Path) -> tuple[str, ...]:
    shard = model / "model-00002-of-00002.safetensors"
    _flip_byte(shard)
    return ("file 'model-00002-of-00002.safetensors' differs from what the vendor signed", "signed sha256:")


def _wrong_key(model: Path, tmp: Path) -> tuple[str, ...]:
    _, other_priv, _ = ec_pair(tmp, "impostor")
    signed = model_signing_cli("sign", "key", str(model), "--private_key", str(other_priv), "--signature", str(model / "model.sig"))  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    return ("signed with a key other than the key of vendor 'acme' (sha256:",)


def _altered_signature(model: Path, tmp: Path) -> tuple[str, ...]:
    bundle = _sig(model)
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    (model / "model.sig").write_text(json.dumps(bundle))
    return ("the signature does not verify with the key of vendor 'acme'",)


def _truncated_json(model: Path, tmp: Path) -> tuple[str, ...]:
    (model / "model.sig").write_bytes((model / "model.sig").read_bytes()[:100])
    return ("is not an OpenSSF model-signing signature bundle: it is not JSON", "truncated or garbled")


def _garbled_bytes(model: Path, tmp: Path) -> tuple[str, ...]:
    (model / "model.sig").write_bytes(b"\x00\xff\xfe garbage")
    return ("is not an OpenSSF model-signing signature bundle: it is not UTF-8 text (byte 1 is ff)",)


def _missing_field(field: str) -> Any:
    def damage(model: Path, tmp: Path) -> tuple[str, ...]:
        bundle = _sig(model)
        if field == "verificationMaterial":
            del bundle[field]
            says = "the bundle lacks verificationMaterial"
        else:
            del bundle["dsseEnvelope"][field]
            says = f"its dsseEnvelope lacks {field}"
        (model / "model.sig").write_text(json.dumps(bundle))
        return ("is not an OpenSSF model-signing signature bundle: " + says,)

    return damage


def _added_file(model: Path, tmp: Path) -> tuple[str, ...]:
    (model / "notes.txt").write_text("added after signing")
    return ("'notes.txt' is not covered by the signature",)


BAD_SIGNATURES = {
    "tampered file": _tamper_file,
    "wrong key": _wrong_key,
    "altered signature": _altered_signature,
    "truncated bundle JSON": _truncated_json,
    "garbled bundle bytes": _garbled_bytes,
    "missing verificationMaterial": _missing_field("verificationMaterial"),
    "missing payload": _missing_field("payload"),
    "missing signatures": _missing_field("signatures"),
    "file added after signing": _added_file,
}


@pytest.mark.parametrize("kind", sorted(BAD_SIGNATURES))
def test_every_kind_of_bad_vendor_signature_exits_47_with_a_message_in_words_naming_the_file_and_vendor(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    """Trial 3: refusals showed Digest byte reprs, an empty InvalidSignature and `KeyError 'verificationMaterial'`."""
    root, model = str(env["root"]), env["model"]
    assert run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))[0] == 0
    says = BAD_SIGNATURES[kind](model, tmp_path)
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 47 and out["error"] == "VendorSignatureError", out
    problem = out["problem"]
    assert f"{model}/model.sig" in problem, problem
    for phrase in says:
        assert phrase in problem, (phrase, problem)
    assert_readable(problem)
    assert out["remedy"] and "remove" not in out["remedy"]
    assert run(capsys, "log", root)[1]["checkpoints"] == []


def test_a_tampered_files_refusal_gives_the_signed_and_actual_sha256_in_hex(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    root, model = str(env["root"]), env["model"]
    run(capsys, "vendor", root, "add", "acme", "--key", str(env["vendor_pub"]))
    shard = model / "model-00002-of-00002.safetensors"
    signed = hashlib.sha256(shard.read_bytes()).hexdigest()
    _flip_byte(shard)
    actual = hashlib.sha256(shard.read_bytes()).hexdigest()
    code, out = run(capsys, "commit", root, str(model), "--key", str(env["key"]))
    assert code == 47
    assert f"signed sha256:{signed}, actual sha256:{actual}" in out["problem"], out["problem"]
