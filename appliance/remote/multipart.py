"""Resumable multipart uploads: a large blob survives a cut, a 5xx or a dead server mid-upload.

Owns: ``upload_multipart`` — upload ``body`` under ``key`` in parts of ``part_size`` bytes, each
with its Content-MD5 (the server checks every part), resuming an upload the server still holds
for the key: parts it lists with the same size and ETag (= the part's MD5) are not sent again.
Other uploads for the key (a different part size, parts whose bytes differ) are aborted, and an
upload the server forgot (``NoSuchUpload``: it restarted) is started anew. A failure leaves the
upload on the server so the next attempt resumes it; ``abort_stale`` (bucket GC) removes those
nobody finished. ``complete`` is the only step that makes the key exist, so a reader never sees
a partial object under a blob's name (docs/design.md §11.4, "Multipart").

Why not ``boto3``'s ``upload_fileobj`` (s3transfer): it aborts on failure and cannot resume an
upload across passes or process restarts; the few client calls here keep boto3 as the client.
Memory: one part at a time (``part_size``, 8 MiB by default), sequential.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000

Call = Callable[[str, Callable[[], Any]], Any]


def _md5(part: bytes | memoryview) -> tuple[str, str]:
    digest = hashlib.md5(part, usedforsecurity=False).digest()
    return digest.hex(), base64.b64encode(digest).decode()


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """``(part_number, start, end)`` covering ``size`` bytes; ``ValueError`` above S3's 10,000 parts."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    parts = [(i + 1, start, min(size, start + part_size)) for i, start in enumerate(range(0, size, part_size))]
    if len(parts) > MAX_PARTS:
        raise ValueError(f"{size} bytes in parts of {part_size} is more than {MAX_PARTS} parts")
    return parts


def _uploads(client: Any, call: Call, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Unfinished uploads under ``prefix`` (some servers answer NoSuchUpload when there are none)."""
    try:
        page = call(f"list uploads {prefix}", partial(client.list_multipart_uploads, Bucket=bucket, Prefix=prefix))
    except FileNotFoundError:
        return []
    return list(page.get("Uploads", []))


def _existing(client: Any, call: Call, bucket: str, key: str) -> list[str]:
    return [u["UploadId"] for u in _uploads(client, call, bucket, key) if u.get("Key") == key]


def _listed_parts(client: Any, call: Call, bucket: str, key: str, upload_id: str) -> dict[int, tuple[int, str]]:
    out: dict[int, tuple[int, str]] = {}
    marker = 0
    while True:
        page = call(f"list parts {key}", partial(
            client.list_parts, Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker))  # fmt: skip
        for p in page.get("Parts", []):
            out[int(p["PartNumber"])] = (int(p["Size"]), str(p["ETag"]).strip('"'))
        if not page.get("IsTruncated"):
            return out
        marker = int(page.get("NextPartNumberMarker") or 0)
        if marker <= 0:
            return out


def upload_multipart(client: Any, call: Call, bucket: str, key: str, body: bytes, *, part_size: int) -> dict[str, int]:
    """Upload ``body`` under ``key`` in parts, resuming a held upload; returns counts of parts sent/reused."""
    parts = plan_parts(len(body), part_size)
    md5s = [_md5(memoryview(body)[start:end]) for _, start, end in parts]
    upload_id, held = None, {}
    for candidate in _existing(client, call, bucket, key):
        try:
            listed = _listed_parts(client, call, bucket, key, candidate) if upload_id is None else {}
        except FileNotFoundError:
            continue  # the server forgot it between listing and now
        fits = all(
            n <= len(parts) and size == parts[n - 1][2] - parts[n - 1][1] and etag == md5s[n - 1][0]
            for n, (size, etag) in listed.items()
        )
        if upload_id is None and fits:
            upload_id, held = candidate, listed
        else:  # another part size or other bytes: never completed, never mixed in
            call(f"abort {key}", partial(client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=candidate))
    if upload_id is None:
        upload_id = call(f"start {key}", lambda: client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    sent = reused = 0
    for (number, start, end), (hexmd5, b64md5) in zip(parts, md5s, strict=True):
        if held.get(number) == (end - start, hexmd5):
            reused += 1
            continue
        chunk = bytes(memoryview(body)[start:end])
        call(f"put {key} part {number}", partial(client.upload_part, Bucket=bucket, Key=key, UploadId=upload_id,
                                                 PartNumber=number, Body=chunk, ContentMD5=b64md5))  # fmt: skip
        sent += 1
    manifest = {"Parts": [{"PartNumber": n, "ETag": f'"{m[0]}"'} for (n, _, _), m in zip(parts, md5s, strict=True)]}
    call(f"complete {key}", lambda: client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=manifest))  # fmt: skip
    return {"parts": len(parts), "sent": sent, "reused": reused}


def abort_stale(client: Any, call: Call, bucket: str, prefix: str) -> int:
    """Abort every unfinished multipart upload under ``prefix`` (bucket GC); returns how many."""
    aborted = 0
    for u in _uploads(client, call, bucket, prefix):
        key, uid = u["Key"], u["UploadId"]
        try:
            call(f"abort {key}", partial(client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=uid))
            aborted += 1
        except FileNotFoundError:
            continue
    return aborted
