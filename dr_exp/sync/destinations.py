"""Destinations of the uploader: a local or network path, rsync over ssh, any fsspec URL.

Each destination sends the files it is given, never under their real name
until complete, and then checks what arrived:

- a **path** (``/share/results``, ``file:///share/results``): each file is
  copied to a hidden temporary name in its final folder, fsynced, and renamed
  over the real name (atomic on POSIX); sizes are checked after the rename;
- **rsync** (``[user@]host:/path``): one ``rsync`` run per folder, started as an
  argument list (never through a shell), over ssh unless the target says
  otherwise.  rsync writes each file under a temporary name and renames it when
  complete, and checks a whole-file checksum of what it sent.  A dry run with
  the same file list then shows that nothing differs in size or time;
- **fsspec** (``s3://``, ``gs://``, ``az://``, ``sftp://``, ...): object stores
  make an object visible only when its upload completes, so files are written
  to their real key; other filesystems get a temporary name and a rename.
  Sizes are checked with one listing of the folder after the upload.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from dr_exp.errors import BadInput

TMP_MARK = ".drexp-tmp-"  # temporary names: .<name>.drexp-tmp-<hex>
CHUNK = 1 << 20
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "b2"}
_ITEMIZED = re.compile(r"^[<>ch.*][fdLDS]\S{9} ")  # rsync --out-format=%i lines
_REMOTE = re.compile(r"^(?:[^/:@]+@)?[^/:]+:")  # rsync's rule: a colon before any slash


class DestinationError(Exception):
    """An upload that failed in a way worth a retry (shown as the folder's last error)."""


class UploadStopped(Exception):
    """The upload must stop now: its lease was lost, or the uploader is stopping."""


class Control:
    """What a destination calls while it sends: throttling, and the lease keepalive.

    ``tick`` raises when the upload must stop (lease lost, uploader stopping).
    ``gate`` guards process creation against a concurrent fork of a job.
    """

    def __init__(
        self,
        keepalive: Callable[[], None] = lambda: None,
        bwlimit_kib: float = 0.0,
        gate: Optional[AbstractContextManager] = None,
    ) -> None:
        self.keepalive = keepalive
        self.rate = bwlimit_kib * 1024.0
        self.gate = gate
        self._start = time.monotonic()
        self._sent = 0

    def tick(self, nbytes: int = 0) -> None:
        if self.rate > 0 and nbytes:
            self._sent += nbytes
            ahead = self._sent / self.rate - (time.monotonic() - self._start)
            while ahead > 0:  # sleep in short steps so the lease keeps being renewed
                time.sleep(min(ahead, 0.2))
                self.keepalive()
                ahead = self._sent / self.rate - (time.monotonic() - self._start)
        self.keepalive()

    @property
    def chunk(self) -> int:
        return CHUNK if self.rate <= 0 else max(4096, min(CHUNK, int(self.rate / 8)))

    def locked(self) -> AbstractContextManager:
        return self.gate if self.gate is not None else nullcontext()


def kind_of(dest: str) -> str:
    """``local``, ``rsync`` or ``fsspec``, by the form of the destination."""
    if "://" in dest:
        return "local" if dest.startswith("file://") else "fsspec"
    if _REMOTE.match(dest):
        return "rsync"
    return "local"


def check_dest(dest: str) -> str:
    """Validate a destination before anything is recorded; returns its canonical form."""
    if not isinstance(dest, str) or not dest.strip():
        raise BadInput(f"must be a path, host:/path or URL, got {dest!r}")
    dest = dest.strip()
    kind = kind_of(dest)
    if kind == "local":
        path = dest[len("file://") :] if dest.startswith("file://") else dest
        return os.path.abspath(os.path.expanduser(path))
    if kind == "fsspec":
        protocol = dest.split("://", 1)[0]
        try:
            import fsspec
        except ImportError:
            raise BadInput(
                f"{protocol}:// destinations need fsspec: pip install 'dr_exp[sync]'"
            ) from None
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise BadInput(f"unknown destination protocol {protocol!r} in {dest!r}") from None
        except ImportError as e:
            raise BadInput(f"{protocol}:// needs a backend that is not installed: {e}") from None
    return dest


def make_destination(dest: str, options: dict, rsync_args: Sequence[str]) -> Destination:
    kind = kind_of(dest)
    if kind == "local":
        return LocalDestination(check_dest(dest))
    if kind == "rsync":
        return RsyncDestination(dest, list(rsync_args))
    return FsspecDestination(dest, dict(options))


class Destination:
    """Uploads files of one local folder to ``<dest>/<rel>/``."""

    def upload(
        self,
        folder: Path,
        rel: str,
        files: Sequence[str],
        ctl: Control,
        done: Callable[[str, int, bool], None],
    ) -> None:
        """Send ``files`` (relative to ``folder``); call ``done(file, size, sent)`` for each.

        ``sent`` is False for a file the destination already held unchanged.
        """
        raise NotImplementedError

    def verify(self, folder: Path, rel: str, expected: dict[str, int], ctl: Control) -> list[str]:
        """The files of ``expected`` (name -> size) that are missing or differ at the destination."""
        raise NotImplementedError

    def cleanup(self, rel: str) -> None:
        """Remove temporary files that a killed uploader left behind."""


def open_no_follow(path: Path) -> Any:
    """Open a file for reading, refusing a symbolic link (one swapped in after the scan)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _copy_stream(src: Any, dst: Any, ctl: Control) -> int:
    sent = 0
    while True:
        block = src.read(ctl.chunk)
        if not block:
            return sent
        dst.write(block)
        sent += len(block)
        ctl.tick(len(block))


class LocalDestination(Destination):
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def upload(self, folder, rel, files, ctl, done):  # type: ignore[no-untyped-def]
        for name in files:
            src = folder / name
            dst = self.root / rel / name
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DestinationError(f"cannot create {dst.parent}: {e.strerror}") from None
            tmp = dst.parent / f".{dst.name}{TMP_MARK}{secrets.token_hex(4)}"
            try:
                with open_no_follow(src) as fin, open(tmp, "wb") as fout:
                    sent = _copy_stream(fin, fout, ctl)
                    fout.flush()
                    os.fsync(fout.fileno())
                shutil.copystat(src, tmp)  # keep the mtime, as rsync -a does
                os.replace(tmp, dst)
            except FileNotFoundError as e:
                if not src.exists():
                    continue  # the job removed it meanwhile: nothing to send
                raise DestinationError(f"cannot write {dst}: {e.strerror}") from None
            except OSError as e:
                raise DestinationError(f"cannot write {dst}: {e.strerror}") from None
            finally:
                if tmp.exists():
                    tmp.unlink()
            if dst.stat().st_size != sent:
                raise DestinationError(f"{dst}: size differs after the copy")
            done(name, sent, True)

    def verify(self, folder, rel, expected, ctl):  # type: ignore[no-untyped-def]
        bad = []
        for name, size in expected.items():
            try:
                if (self.root / rel / name).stat().st_size != size:
                    bad.append(name)
            except OSError:
                bad.append(name)
        return bad

    def cleanup(self, rel: str) -> None:
        base = self.root / rel
        for dirpath, _, names in os.walk(base):
            for n in names:
                if TMP_MARK in n:
                    try:
                        os.unlink(os.path.join(dirpath, n))
                    except OSError:
                        pass


_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class RsyncDestination(Destination):
    """``[user@]host:/path`` through rsync (over ssh unless ``rsync_args`` say otherwise)."""

    def __init__(self, dest: str, rsync_args: list[str]) -> None:
        self.dest = dest.rstrip("/") + "/"
        self.args = rsync_args
        self.rsync = shutil.which("rsync")

    def _run(self, folder: Path, rel: str, files: Sequence[str], extra: list[str], ctl: Control):
        """Run rsync over ``files``; returns its itemized output lines."""
        if self.rsync is None:
            raise DestinationError("rsync is not installed on this machine")
        # --files-from implies --relative: the list holds <rel>/<file> below the common
        # base, so rsync creates <dest>/<rel>/... itself.
        base = str(folder)[: len(str(folder)) - len(rel)] or "/"
        with tempfile.TemporaryDirectory(prefix="dr_exp-rsync-") as tmp:
            listing = Path(tmp) / "files"
            listing.write_bytes(b"".join(os.fsencode(f"{rel}/{f}") + b"\0" for f in files))
            out_path = Path(tmp) / "out"
            cmd = [
                self.rsync,
                "-a",
                f"--files-from={listing}",
                "--from0",
                "--out-format=%i %n",
                "--timeout=300",
                *extra,
                *self.args,
                base.rstrip("/") + "/",
                self.dest,
            ]
            if sys.platform.startswith("linux"):  # rsync dies with the uploader (kill -9)
                cmd = [sys.executable, "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *cmd]
            # Output goes to a file, not a pipe: a job forked meanwhile could inherit a
            # pipe's write end and hold it open for as long as it runs.
            with open(out_path, "w+b") as out:
                with ctl.locked():
                    proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                    )
                try:
                    while True:
                        try:
                            proc.wait(timeout=0.5)
                            break
                        except subprocess.TimeoutExpired:
                            ctl.tick()
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                out.seek(0)
                lines = out.read().decode(errors="replace").splitlines()
        if proc.returncode != 0:
            # The first message says why (ssh: connect to host ... refused); rsync's own
            # closing "rsync error: ..." line only names its exit code.
            errors = [ln.strip() for ln in lines if ln.strip() and not _ITEMIZED.match(ln)]
            errors = [ln for ln in errors if not ln.startswith("Warning:")] or errors
            why = next((ln for ln in errors if not ln.startswith("rsync error")), "")
            why = why or (errors[-1] if errors else "no output")
            raise DestinationError(f"rsync to {self.dest} exited {proc.returncode}: {why}")
        return lines

    def upload(self, folder, rel, files, ctl, done):  # type: ignore[no-untyped-def]
        if not files:
            return
        extra = [f"--bwlimit={max(1, int(ctl.rate / 1024))}"] if ctl.rate > 0 else []
        lines = self._run(folder, rel, files, extra, ctl)
        sent = {ln.split(" ", 1)[1][len(rel) + 1 :] for ln in lines if ln.startswith("<f")}
        for name in files:
            try:
                size = (folder / name).stat().st_size
            except OSError:
                continue  # the job removed it meanwhile
            done(name, size, name in sent)

    def verify(self, folder, rel, expected, ctl):  # type: ignore[no-untyped-def]
        if not expected:
            return []
        lines = self._run(folder, rel, sorted(expected), ["--dry-run"], ctl)
        return [ln.split(" ", 1)[1][len(rel) + 1 :] for ln in lines if ln.startswith("<f")]


class FsspecDestination(Destination):
    """Any fsspec URL; ``options`` are the filesystem's storage options (endpoint_url, ...)."""

    def __init__(self, dest: str, options: dict) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(dest, **options)
        self.root = self.root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.atomic_put = bool(OBJECT_STORES & set(protocols))

    def _path(self, rel: str, name: str = "") -> str:
        return "/".join(p for p in (self.root, rel, name) if p)

    def upload(self, folder, rel, files, ctl, done):  # type: ignore[no-untyped-def]
        for name in files:
            src = folder / name
            dst = self._path(rel, name)
            target = dst
            if not self.atomic_put:
                parent, _, base = dst.rpartition("/")
                target = f"{parent}/.{base}{TMP_MARK}{secrets.token_hex(4)}"
            try:
                if not self.atomic_put:
                    self.fs.makedirs(dst.rpartition("/")[0], exist_ok=True)
                with open_no_follow(src) as fin, self.fs.open(target, "wb") as fout:
                    sent = _copy_stream(fin, fout, ctl)
                if target != dst:
                    self.fs.mv(target, dst)
                self.fs.invalidate_cache(dst)
                size = self.fs.info(dst)["size"]
            except FileNotFoundError:
                if not src.exists():
                    continue
                raise DestinationError(f"cannot write {dst}: not found") from None
            except Exception as e:
                if target != dst:
                    try:
                        self.fs.rm(target)
                    except Exception:
                        pass
                if isinstance(e, UploadStopped):
                    raise
                raise DestinationError(f"cannot write {self._url(dst)}: {_one_line(e)}") from None
            if size != sent:
                raise DestinationError(f"{self._url(dst)}: size {size} differs from {sent} sent")
            done(name, sent, True)

    def _url(self, path: str) -> str:
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path}"

    def _listing(self, rel: str) -> dict[str, int]:
        base = self._path(rel)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise DestinationError(f"cannot list {self._url(base)}: {_one_line(e)}") from None
        out = {}
        for path, info in found.items():
            path = path.rstrip("/")
            if path.startswith(base + "/") and info.get("type") != "directory":
                out[path[len(base) + 1 :]] = int(info.get("size") or 0)
        return out

    def verify(self, folder, rel, expected, ctl):  # type: ignore[no-untyped-def]
        there = self._listing(rel)
        return [n for n, size in expected.items() if there.get(n) != size]

    def cleanup(self, rel: str) -> None:
        try:
            leftovers = [n for n in self._listing(rel) if TMP_MARK in n.rsplit("/", 1)[-1]]
            for n in leftovers:
                self.fs.rm(self._path(rel, n))
        except Exception:
            pass


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ").strip()
    return text[:300]
