"""Shard reads over the network within a budget: http(s)://, s3://, gs://.

A shard is read as one byte stream that survives faults: a connect timeout, a stall timeout (no
byte for that long on an open connection), and on a stall, a cut connection, a 5xx/408/429 answer
or an object-store I/O error, a bounded number of retries with exponential backoff that resume
at the byte where the read stopped (HTTP `Range: bytes=N-`; a server that ignores Range and sends
the whole shard has its first N bytes read and dropped; object stores seek). The tar reader above
sees one gap-free stream, so no sample is read twice or lost. Missing shards and other 4xx
answers are not retried.

HTTP is written on the standard library's http.client: it takes a connect timeout and a per-recv
read timeout separately, which urllib.request does not, and it is no new dependency. Object
stores go through pyarrow.fs, the layer train.storage_path uses, with credentials and endpoint
(AWS_ENDPOINT_URL) from the environment as pyarrow resolves them.
"""
from __future__ import annotations

import http.client
import io
import ssl
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

from pipeline.data.errors import DataError

REMOTE = ("http", "https", "s3", "gs", "gcs")
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# AWS/GCS errors that no retry can fix (pyarrow raises them as plain OSError).
_PERMANENT = ("ACCESS_DENIED", "NO_SUCH_BUCKET", "NO_SUCH_KEY", "INVALID_ACCESS_KEY",
              "SIGNATURE_DOES_NOT_MATCH", "PERMISSION_DENIED", "UNAUTHENTICATED")


@dataclass(frozen=True)
class Budget:
    """Timeouts and retries of one shard read (data.connect_timeout_s etc., same defaults)."""
    connect_timeout_s: float = 10.0   # TCP (and TLS) connect, s
    stall_timeout_s: float = 60.0     # no byte received for this long on an open connection, s
    retries: int = 3                  # retries per shard, each resuming where the read stopped
    retry_backoff_s: float = 1.0      # wait before the first retry, doubled for each next one


@dataclass
class Tally:
    """Network counts of one reader (a loader worker): retries made, shards given up on."""
    retries: int = 0
    skipped_shards: int = 0


class ShardUnreadable(DataError):
    """A shard still failing after every retry of its budget; the message names shard, cause and
    attempts. One str argument, so DataLoader can re-raise it in the main process."""


class _Permanent(Exception):
    """A fault a retry cannot fix (404, 403, ...): fail the shard at once."""

    def __init__(self, reason: str, missing: bool = False):
        super().__init__(reason)
        self.missing = missing


class _Retryable(OSError):
    """A fault worth a retry that the transport did not raise itself (5xx, a short body)."""


def is_remote(url: str) -> bool:
    return urlparse(url).scheme in REMOTE


class _Http:
    """GET the url from byte `pos` on: -> (response, total size or None, bytes to drop)."""

    buffer_size = 1 << 20

    def __init__(self, url: str, budget: Budget):
        self.url, self.budget = url, budget

    def open(self, pos: int):
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            u = urlparse(url)
            conn = self._connection(u)
            headers = {"Accept-Encoding": "identity", "User-Agent": "ganforge"}
            if pos:
                headers["Range"] = f"bytes={pos}-"
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            conn.request("GET", url if getattr(conn, "_ganforge_proxy", False) else target, headers=headers)
            r = conn.getresponse()
            if r.status in _REDIRECTS and r.getheader("Location"):
                url = urljoin(url, r.getheader("Location"))
                r.close()
                conn.close()
                continue
            return self._body(r, conn, pos)
        raise _Permanent(f"more than {_MAX_REDIRECTS} redirects")

    def _connection(self, u):
        b = self.budget
        https = u.scheme == "https"
        proxy = urllib.request.getproxies().get(u.scheme)
        if proxy and urllib.request.proxy_bypass(u.hostname or ""):
            proxy = None
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        kw = {"context": ssl.create_default_context()} if https else {}
        if proxy:
            p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            conn = cls(p.hostname, p.port, timeout=b.connect_timeout_s, **kw)
            if https:
                conn.set_tunnel(u.hostname, u.port)
            else:
                conn._ganforge_proxy = True  # a plain-http proxy takes the absolute URL
        else:
            conn = cls(u.hostname, u.port, timeout=b.connect_timeout_s, **kw)
        try:
            conn.connect()
        except TimeoutError:
            raise _Retryable(f"no connection within {b.connect_timeout_s:g} s") from None
        conn.sock.settimeout(b.stall_timeout_s)  # from now on: the longest wait for one recv
        return conn

    @staticmethod
    def _body(r, conn, pos: int):
        status = r.status
        if status == 206:
            crange = r.getheader("Content-Range", "")  # "bytes START-END/TOTAL"
            try:
                start = int(crange.split()[1].split("-")[0])
                total = crange.rsplit("/", 1)[1]
                total = None if total == "*" else int(total)
            except (IndexError, ValueError):
                conn.close()
                raise _Retryable(f"HTTP 206 with a bad Content-Range {crange!r}") from None
            if start != pos:
                conn.close()
                raise _Retryable(f"HTTP 206 from byte {start}, asked for {pos}")
            return _Body(r, conn), total, 0
        if status == 200:
            length = r.getheader("Content-Length")
            return _Body(r, conn), int(length) if length and length.isdigit() else None, pos
        if status == 416 and pos:  # asked from the very end: nothing is left
            r.close()
            conn.close()
            return io.BytesIO(b""), pos, 0
        reason = f"HTTP {status} {r.reason}".strip()
        r.close()
        conn.close()
        if status in (408, 429) or status >= 500:
            raise _Retryable(reason)
        raise _Permanent(reason, missing=status in (404, 410))


class _Body:
    """An HTTP response body read one recv at a time, so a stall loses no byte already received
    (HTTPResponse.readinto waits to fill the whole buffer and drops it all on a timeout)."""

    def __init__(self, r, conn):
        self.r, self.conn = r, conn

    def readinto(self, b) -> int:
        data = self.r.read1(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.r.close()
        self.conn.close()


class _Store:
    """An object in s3:// or gs:// through pyarrow.fs: -> (file seeked to `pos`, size, 0)."""

    buffer_size = 8 << 20  # each read of a pyarrow object file is one ranged GET

    def __init__(self, url: str, budget: Budget):
        self.url, self.budget, self.fs = url, budget, None

    def open(self, pos: int):
        if self.fs is None:
            self.fs, self.path = filesystem(self.url, self.budget)
        try:
            f = self.fs.open_input_file(self.path)
        except (FileNotFoundError, PermissionError) as e:
            raise _Permanent(str(e).splitlines()[0], missing=isinstance(e, FileNotFoundError)) from None
        except OSError as e:
            if any(code in str(e) for code in _PERMANENT):
                raise _Permanent(str(e).splitlines()[0]) from None
            raise
        f.seek(pos)
        return f, f.size(), 0


def filesystem(url: str, budget: Budget):
    """pyarrow's filesystem for url as FileSystem.from_uri resolves it (credentials, region,
    endpoint from the environment), remade with the budget's timeouts. S3 retries are left to
    ganforge (one SDK attempt), so data.retries means what it says and each retry resumes."""
    import datetime

    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(url)
    # __reduce__ is the pickling protocol: the options from_uri resolved, as constructor kwargs.
    kw = dict(fs.__reduce__()[1][0])
    if isinstance(fs, pafs.S3FileSystem):
        if not (kw.get("proxy_options") or {}).get("host"):
            kw.pop("proxy_options", None)
        # On Linux the SDK applies request_timeout as curl's low-speed time: a stall timeout.
        kw.update(connect_timeout=budget.connect_timeout_s, request_timeout=budget.stall_timeout_s,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        fs = pafs.S3FileSystem(**kw)
    elif type(fs).__name__ == "GcsFileSystem":
        # GCS takes no stall timeout; bound its own retrying (15 minutes by default) instead.
        kw["retry_time_limit"] = datetime.timedelta(seconds=budget.connect_timeout_s + budget.stall_timeout_s)
        fs = type(fs)(**kw)
    return fs, path


class _Resuming(io.RawIOBase):
    """The shard's bytes as one stream; faults are retried within the budget and resumed."""

    def __init__(self, url: str, budget: Budget, tally: Tally | None = None):
        super().__init__()
        self.url, self.budget, self.tally = url, budget, tally
        self.source = (_Http if urlparse(url).scheme in ("http", "https") else _Store)(url, budget)
        self.pos, self.total, self.retries, self._raw = 0, None, 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self.total is not None and self.pos >= self.total:
                return 0
            try:
                if self._raw is None:
                    self._open()
                n = self._raw.readinto(b)
                if not n:
                    if self.total is None:  # no length known: the end of the body is the end
                        return 0
                    raise _Retryable(f"connection closed at byte {self.pos} of {self.total}")
                self.pos += n
                return n
            except _Permanent as e:
                self._drop()
                if e.missing:
                    raise DataError(f"shard {self.url} does not exist ({e})") from None
                raise DataError(f"shard {self.url} cannot be read: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                self._failed(e)

    def _open(self) -> None:
        raw, total, drop = self.source.open(self.pos)
        self._raw = raw
        if total is not None:
            if self.total is not None and total != self.total:
                raise _Permanent(f"the shard changed size while read ({self.total} -> {total} bytes)")
            self.total = total
        # A server that ignored Range: read the bytes we already have again and drop them.
        scratch = bytearray(min(drop, 1 << 20))
        while drop:
            n = raw.readinto(memoryview(scratch)[:min(drop, len(scratch))])
            if not n:
                raise _Retryable(f"connection closed while re-reading the first {self.pos} bytes")
            drop -= n

    def _failed(self, e: BaseException) -> None:
        self._drop()
        cause = _describe(e, self.budget)
        if self.retries >= self.budget.retries:
            at = f"byte {self.pos}" + (f" of {self.total}" if self.total is not None else "")
            raise ShardUnreadable(f"shard {self.url}: unreadable after {self.retries + 1} attempts "
                                  f"(last: {cause}, at {at})") from None
        time.sleep(self.budget.retry_backoff_s * 2 ** self.retries)
        self.retries += 1
        if self.tally is not None:
            self.tally.retries += 1

    def _drop(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass

    def close(self) -> None:
        self._drop()
        super().close()


def _describe(e: BaseException, budget: Budget) -> str:
    if isinstance(e, TimeoutError):
        return f"stalled: no byte for {budget.stall_timeout_s:g} s"
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed mid-chunk"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, _Retryable) else text


def open_remote(url: str, budget: Budget | None = None, tally: Tally | None = None):
    """A buffered, non-seekable reader of a remote shard; its retries are added to `tally`."""
    r = _Resuming(url, budget or Budget(), tally)
    return io.BufferedReader(r, r.source.buffer_size)
