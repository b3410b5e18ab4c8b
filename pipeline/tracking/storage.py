"""Where a run's results live: a local (or NFS) folder, or an object-store URI (s3://, gs://).

Ray Train writes its checkpoints there itself (RunConfig(storage_path=...)). ganforge's few small
files beside them (the MLflow link, the resolved config, the best checkpoint, the failure-injection
marker) go through pyarrow.fs, the filesystem layer Ray Train uses, so that every node of a
cluster sees them and one code path serves local folders and buckets alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

# Schemes that pyarrow.fs resolves without extra plugins (gs and gcs are the same store).
SCHEMES = ("file", "s3", "gs", "gcs")


class StorageError(ValueError):
    """A storage location that cannot be used; the message names it."""


def normalize(spec: str | os.PathLike, key: str = "train.storage_path") -> str:
    """-> an absolute local path, or the URI unchanged. Unknown schemes are refused by name."""
    spec = str(spec)
    u = urlparse(spec)
    scheme = u.scheme
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        # Ray Train requires an absolute path; workers run in another working directory.
        return str(Path(spec).expanduser().resolve())
    if scheme not in SCHEMES:
        raise StorageError(f"{key}: scheme {scheme!r} in {spec!r} is not supported "
                           f"(use a local/NFS path or one of {', '.join(s + '://' for s in SCHEMES)})")
    if scheme == "file" and u.netloc not in ("", "localhost"):
        raise StorageError(f"{key}: {spec!r} must be an absolute file:// URI (file:///abs/path)")
    if scheme != "file" and not u.netloc:
        raise StorageError(f"{key}: {spec!r} names no bucket ({scheme}://BUCKET/prefix)")
    return spec.rstrip("/")


def is_uri(location: str) -> bool:
    return urlparse(str(location)).scheme in SCHEMES


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def _fs(location: str):
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(location)


# Local paths take the standard library: the local context (benchmarks, a bare GPU machine)
# then needs no pyarrow.

def exists(location: str) -> bool:
    if not is_uri(location):
        return os.path.exists(location)
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_text(location: str) -> str | None:
    """The file's text, or None when it does not exist."""
    if not exists(location):
        return None
    if not is_uri(location):
        return Path(location).read_text()
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text)
        return
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def makedirs(location: str) -> None:
    if not is_uri(location):
        os.makedirs(location, exist_ok=True)
        return
    fs, path = _fs(location)
    fs.create_dir(path, recursive=True)


def upload_dir(local_dir: str | Path, location: str, last: str | None = None) -> None:
    """Copy a local folder's files to `location`, `last` (e.g. meta.json) after all others, so
    that a reader which trusts `last` never sees a half-copied folder as complete."""
    import pyarrow.fs

    fs, dest = _fs(location)
    local_fs = pyarrow.fs.LocalFileSystem()
    fs.create_dir(dest, recursive=True)
    if last and exists(join(location, last)):
        fs.delete_file(f"{dest}/{last}")
    names = [p.name for p in Path(local_dir).iterdir() if p.is_file()]
    for name in sorted(names, key=lambda n: (n == last, n)):
        pyarrow.fs.copy_files(str(Path(local_dir) / name), f"{dest}/{name}",
                              source_filesystem=local_fs, destination_filesystem=fs)
