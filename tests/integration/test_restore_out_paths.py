"""`restore --out` paths that cannot be written: a typed usage error naming the part, never a traceback.

Found by a new-user trial of issue 11: a file where a directory must be, a missing parent of a
file output, and an unwritable location raised Python tracebacks (or blamed the safetensors
library). Each is now refused before the checkpoint is read, naming the path and the remedy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from appliance import api
from appliance.cli.main import main
from appliance.errors import UsageError
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def root(tmp_path: Path) -> Path:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "store", [key.public], StoreConfig(model="m"))
    api.save(store, {"w": torch.arange(16, dtype=torch.float32)}, key)
    (tmp_path / "afile").write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("afile/sub/", "afile is a file, not a directory"),
        ("afile/x.safetensors", "afile is a file, not a directory"),
        ("afile/a/b/c/", "afile is a file, not a directory"),
        ("nodir/x.safetensors", "the directory"),
        ("/proc/appliance-nope/", "cannot write"),
    ],
)
def test_an_out_path_that_cannot_be_written_is_a_usage_error_not_a_traceback(
    root: Path, out: str, says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    code = main(["restore", str(root / "store"), "--out", out])
    err = capsys.readouterr().err
    assert code == UsageError.exit_code, err
    assert says in err and "remedy:" in err and "Traceback" not in err
    assert not list(root.glob(".*.tmp-*")), "no temp output left behind"


def test_a_file_output_in_an_existing_directory_and_a_new_directory_output_still_work(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    (root / "there").mkdir()
    assert main(["restore", str(root / "store"), "--out", "there/x.safetensors"]) == 0
    assert main(["restore", str(root / "store"), "--out", "new/deeper/dir/"]) == 0
    assert (root / "there/x.safetensors").is_file() and (root / "new/deeper/dir").is_dir()
