"""One measured operation in a fresh process: ``python -m bench.child OP JSON-ARGS``.

A fresh process per measurement is what a boot sees (cold Python, fresh memory) and lets the
parent read the operation's own peak RSS (``os.wait4``). Prints one JSON object: ``seconds``
(wall time of the operation only), ``cpu`` (user+sys of this process during it) and
op-specific fields. Digests are computed after the timer stops.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.data import state_digest

PAGE = 4096
OPS: dict[str, Callable[..., dict[str, Any]]] = {}


def op(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    OPS[fn.__name__] = fn
    return fn


class Timer:
    def __enter__(self) -> Timer:
        self.t0, self.c0 = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds, self.cpu = time.perf_counter() - self.t0, _cpu() - self.c0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _touch(tensors: dict[str, torch.Tensor]) -> None:
    """Read one byte of every page, so lazily mapped tensors are really in memory."""
    for t in tensors.values():
        if t.numel():
            t.contiguous().view(-1).view(torch.uint8)[::PAGE].sum()


@op
def digest_file(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {"digest": state_digest(load_file(path)), "sha256_file": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


@op
def ours_commit(root: str, key: str, source: str, policy: str) -> dict[str, Any]:
    from appliance.signing import SigningKey
    from appliance.sources.safetensors_io import open_model
    from appliance.store.store import Store

    store, signing = Store.open(root), SigningKey.load(key)
    model = open_model(source)
    with Timer() as t:
        result, _ = store.commit(model.sources, [signing], policy=policy)
    return {"seconds": t.seconds, "cpu": t.cpu} | result.to_dict()


@op
def ours_restore(root: str, mode: str) -> dict[str, Any]:
    from appliance import api
    from appliance.store.store import Store

    store = Store.open(root)
    with Timer() as t:
        loaded = api.load(store, zero_copy=(mode == "zero_copy"))
    return {"seconds": t.seconds, "cpu": t.cpu, "stats": loaded.stats.to_dict(), "digest": state_digest(loaded.tensors)}


def file_sha256(path: str) -> str:
    """SHA-256 of a file at OpenSSL speed (hashlib, 16 MiB reads): ``sha256sum`` done fast.

    GNU coreutils 9.1's ``sha256sum`` (Debian 12) does not use the SHA extensions and runs at
    ~0.26 GB/s here; hashlib runs at ~1.5 GB/s. The stronger baseline is the fair one.
    """
    h, buf = hashlib.sha256(), bytearray(16 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@op
def careful(path: str, sha256_file: str, tool: str = "hashlib") -> dict[str, Any]:
    """What a careful user does without appliance: sha256sum the file, then load it and use the pages."""
    from safetensors.torch import load_file

    with Timer() as t:
        if tool == "sha256sum":
            out = subprocess.run(["sha256sum", path], check=True, capture_output=True, text=True).stdout.split()[0]
        else:
            out = file_sha256(path)
        if out != sha256_file:
            raise SystemExit("sha256 mismatch")
        tensors = load_file(path)
        _touch(tensors)
    return {"seconds": t.seconds, "cpu": t.cpu, "digest": state_digest(tensors)}


@op
def torch_load(path: str) -> dict[str, Any]:
    with Timer() as t:
        tensors = torch.load(path, weights_only=True)  # noqa: TID251 (the peer under test; the bench wrote this file)
    return {"seconds": t.seconds, "cpu": t.cpu, "digest": state_digest(tensors)}


@op
def torch_save(source: str, path: str) -> dict[str, Any]:
    import os

    from safetensors.torch import load_file

    tensors = {k: v.clone() for k, v in load_file(source).items()}
    with Timer() as t:
        torch.save(tensors, path)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return {"seconds": t.seconds, "cpu": t.cpu}


@op
def zipnn(source: str, threads: int) -> dict[str, Any]:
    """zipnn on every tensor (compress a copy: zipnn rewrites its input), then decompress from memory."""
    import zipnn as zn
    from safetensors.torch import load_file

    tensors = load_file(source)
    blobs: list[tuple[str, bytes, torch.dtype]] = []
    raw = stored = 0
    compress_s = decompress_s = 0.0
    codecs: dict[str, Any] = {}
    names = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}
    for name, t in tensors.items():
        data = bytearray(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        dtype = names.get(t.dtype)
        t0 = time.perf_counter()
        if dtype is None or not data:  # zipnn takes float weights only; the rest stays raw
            blob = bytes(data)
        else:
            blob = codecs.setdefault(dtype, zn.ZipNN(bytearray_dtype=dtype, threads=threads)).compress(data)
        compress_s += time.perf_counter() - t0
        raw, stored = raw + len(data), stored + len(blob)
        blobs.append((name, bytes(blob), t.dtype))
    out = {}
    for name, blob, torch_dtype in blobs:
        dtype = names.get(torch_dtype)
        t0 = time.perf_counter()
        plain = codecs[dtype].decompress(blob) if dtype in codecs and blob else blob
        decompress_s += time.perf_counter() - t0
        shape = tensors[name].shape
        out[name] = torch.frombuffer(bytearray(plain), dtype=torch_dtype).reshape(shape) if plain else tensors[name]
    return {
        "seconds": decompress_s,
        "compress_seconds": compress_s,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "digest": state_digest(out),
    }


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = OPS[name](**args)
    from bench.measure import vm_hwm

    print(json.dumps(result | {"peak_rss": vm_hwm()}, default=str))


if __name__ == "__main__":
    main()
