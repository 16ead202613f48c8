"""The S3 edge: one small object-store interface over boto3, with typed errors and a bandwidth limit.

Owns: ``ObjectStore`` (put, get, size, list, delete under a bucket and key prefix), translating every
client failure into the error tree (credentials/bucket refused -> ``ConfigError`` 18; network
down, timeouts, 5xx after the client's retries -> ``SourceUnavailableError`` 69; missing key ->
``FileNotFoundError``), ``RemoteLayout`` (a portable layout under a prefix, read through the same
``LayoutReader`` interface an import reads a USB stick with) and ``TokenBucket`` (upload rate).

Why boto3 (docs/design.md §11.4): pure Python wheels for every platform (aarch64 / Python 3.10 on
JetPack 6 included, nothing to compile), the reference S3 client that every S3-compatible server
is tested against, a documented retry mode with exponential backoff and jitter, and multipart
uploads with a bounded part size and concurrency (memory = part size x concurrency). Its cost is
install size (~ 100 MB with botocore's service models) and ~0.3 s import time; it is imported
only by the replication and remote-restore paths, never by boot's local walk.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from appliance.errors import ConfigError, LimitExceededError, RemoteServerError, SourceUnavailableError
from appliance.format.remote import backoff_delay
from appliance.remote.config import Credentials, RemoteConfig
from appliance.remote.multipart import upload_multipart

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
BODY_RETRY_BASE, BODY_RETRY_CAP = 0.2, 5.0  # seconds: a download that broke off mid-body is fetched again
_SERVER_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "Throttling",
                 "ThrottlingException", "500", "502", "503", "504"}  # fmt: skip
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"}
_CONFIG_CODES = {"NoSuchBucket", "InvalidBucketName", "PermanentRedirect", "AuthorizationHeaderMalformed"}
_MISSING_CODES = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}


class TokenBucket:
    """Upload rate limit in bytes per second (0 = none); ``take`` sleeps until ``n`` bytes are allowed."""

    def __init__(
        self, rate: int, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ):
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.capacity = max(rate, 1)
        self.tokens = float(self.capacity)
        self.last = clock()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if isinstance(response, dict) else 0
    return int(status) if isinstance(status, int) else 0


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {}) if isinstance(response, dict) else {}
    return str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class ObjectStore:
    """A bucket and key prefix on an S3-compatible service. Keys passed in are relative to the prefix."""

    def __init__(self, config: RemoteConfig, prefix: str, credentials: Credentials | None = None) -> None:
        import boto3
        from botocore.config import Config

        creds = credentials or Credentials.load(config.credentials)
        self.config, self.prefix, self.bucket = config, prefix.strip("/"), config.bucket
        self.limiter = TokenBucket(config.bandwidth_limit)
        self.requests = 0
        self.multipart_uploads = 0
        self.body_retries = 0
        self.multipart_threshold, self.part_size = MULTIPART_THRESHOLD, MULTIPART_CHUNK  # tests may lower them
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            config=Config(
                retries={"mode": "standard", "max_attempts": config.max_attempts},
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=4,
            ),
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        self.requests += 1
        try:
            return fn()
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING_CODES:
                raise FileNotFoundError(what) from exc
            if code in _AUTH_CODES:
                raise ConfigError(
                    f"the object store at {self.config.endpoint} refused the credentials ({code}) for {what}",
                    remedy=f"check the access key in {self.config.credentials} and the bucket's policy",
                ) from exc
            if code in _CONFIG_CODES:
                raise ConfigError(f"the object store refused {what}: {code}", remedy="check remote.json") from exc
            if code in _SERVER_CODES or _status(exc) >= 500:
                raise RemoteServerError(
                    f"the object store kept failing {what} with {code or _status(exc)} after "
                    f"{self.config.max_attempts} attempt(s)"
                ) from exc
            raise SourceUnavailableError(f"the object store failed {what}: {code or exc}") from exc
        except (ReadTimeoutError, ResponseStreamingError, IncompleteReadError) as exc:
            raise RemoteServerError(
                f"the object store at {self.config.endpoint} stalled or broke off ({what}): {exc}"
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise SourceUnavailableError(
                f"the object store at {self.config.endpoint} is unreachable ({what}): {exc}"
            ) from exc

    # --- writes --------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Upload ``data`` under ``name``; the server checks its MD5 (per part above ``multipart_threshold``:
        a resumable multipart upload, ``appliance.remote.multipart``)."""
        body = bytes(data)
        self.limiter.take(len(body))
        key = self.key(name)
        if len(body) <= self.multipart_threshold:
            md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            self._call(
                f"put {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5)
            )
            return
        self.multipart_uploads += 1
        upload_multipart(self.client, self._call, self.bucket, key, body, part_size=self.part_size)

    def delete(self, name: str) -> None:
        key = self.key(name)
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    # --- reads ---------------------------------------------------------------------------------

    def size(self, name: str) -> int | None:
        key = self.key(name)
        try:
            head = self._call(f"stat {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def get(self, name: str, max_size: int) -> bytes:
        """The whole object, refusing (before reading it all) one larger than ``max_size``.

        A body that stalls or breaks off after the headers (the client's own retries end at the
        headers) is fetched again, up to ``max_attempts`` times with backoff; then ``RemoteServerError``.
        """
        key = self.key(name)

        def fetch() -> bytes:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            length = int(obj.get("ContentLength", 0))
            if length > max_size:
                obj["Body"].close()
                raise LimitExceededError(f"{key} is {length} bytes, above the cap of {max_size}")
            data: bytes = obj["Body"].read(max_size + 1)
            return data

        attempt = 0
        while True:
            attempt += 1
            try:
                data: bytes = self._call(f"get {key}", fetch)
                break
            except RemoteServerError:
                if attempt >= self.config.max_attempts:
                    raise
                self.body_retries += 1
                time.sleep(backoff_delay(attempt, base=BODY_RETRY_BASE, cap=BODY_RETRY_CAP, rand=random.random()))  # noqa: S311 - jitter
        if len(data) > max_size:
            raise LimitExceededError(f"{key} is larger than the cap of {max_size}")
        return data

    def list(self, name_prefix: str, delimiter: str = "", limit: int = 100_000) -> Iterator[str]:
        """Names (relative to this store's prefix) under ``name_prefix``, at most ``limit``."""
        return (name for name, _, _ in self.list_info(name_prefix, delimiter, limit))

    def list_info(
        self, name_prefix: str, delimiter: str = "", limit: int = 100_000
    ) -> Iterator[tuple[str, int, float]]:
        """``(name, size, last_modified)`` (unix seconds of the upload) of each object under ``name_prefix``."""
        full = self.key(name_prefix)
        token: str | None = None
        seen = 0
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self._list_page(full, kwargs)
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                modified = item.get("LastModified")
                yield name, int(item.get("Size", 0)), modified.timestamp() if modified is not None else float("inf")
                seen += 1
                if seen >= limit:
                    return
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _list_page(self, full: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = self._call(f"list {full}", lambda: self.client.list_objects_v2(**kwargs))
        return page


class RemoteLayout:
    """A portable layout under an ``ObjectStore``: the ``LayoutReader`` an import reads.

    ``pinned``: when set (the bundle file name a verified head names), ``listdir("bundles")``
    returns only it, so an import never lists a bucket an attacker may have filled with junk.
    """

    def __init__(self, store: ObjectStore, pinned: str | None = None) -> None:
        self.store, self.pinned = store, pinned

    def read(self, path: str, max_size: int) -> bytes:
        return self.store.get(path, max_size)

    def read_into(self, path: str, out: memoryview) -> int:
        data = self.store.get(path, len(out) + 1)
        n = min(len(data), len(out))
        out[:n] = data[:n]
        return len(data)

    def size(self, path: str) -> int | None:
        return self.store.size(path)

    def listdir(self, path: str) -> list[str] | None:
        if path == "bundles" and self.pinned is not None:
            return [self.pinned]
        names = [n[len(path) + 1 :] for n in self.store.list(path + "/", limit=10_000)]
        return sorted(n for n in names if "/" not in n)
