"""Read an untrusted zip archive without letting it escape the folder or fill memory/disk.

Nothing here extracts to disk by entry name: callers get bytes and choose their own file names. Still,
entries that would escape (absolute paths, `..`, drive letters, symbolic links) are refused by name so the
report says so, and the caps (entry count, total size, compression ratio) are checked twice: against the
central directory before reading anything, and against the bytes actually inflated while streaming.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

from sdtune_ui.errors import DatasetError

_CHUNK = 64 * 1024
# Compression methods whose decompressor zipfile bounds per read (deflate takes a max_length); bzip2 and
# lzma inflate a whole chunk at once, which a crafted entry can turn into gigabytes.
_SAFE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# The ratio cap only applies to entries big enough to matter: tiny text files compress 100:1 innocently.
_RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 5000
    max_total_bytes: int = 4 * 1024**3  # uncompressed, all entries together
    max_entry_bytes: int = 200 * 1024**2
    max_ratio: float = 100.0  # uncompressed / compressed, per large entry and for the whole archive


class ArchiveRefused(DatasetError):
    """The whole archive is refused (a zip bomb, too many entries, not a zip)."""


@dataclass(frozen=True)
class ZipEntry:
    name: str  # normalised posix path inside the archive
    size: int  # as declared in the central directory
    info: zipfile.ZipInfo


def unsafe_entry_reason(info: zipfile.ZipInfo) -> str | None:
    """Why this entry must not be used, or None. Directory entries are not checked here."""
    name = info.filename
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):  # 3 = Unix: the high bits are st_mode
        return "symbolic link entries are not followed"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path: the entry would be written outside the dataset folder"
    if ".." in norm.split("/"):
        return "path with '..': the entry would be written outside the dataset folder"
    if "\0" in norm or any(ord(c) < 32 for c in norm):
        return "control characters in the file name"
    if info.flag_bits & 0x1:
        return "password-protected entries are not supported"
    if info.compress_type not in _SAFE_METHODS:
        return "unsupported compression method (re-create the zip with standard deflate compression)"
    return None


def _eocd_entry_count(path: str | os.PathLike[str]) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile parses every entry."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            tail_len = min(size, 65535 + 22 + 20)
            handle.seek(size - tail_len)
            tail = handle.read(tail_len)
    except OSError:
        return None
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    (count,) = struct.unpack("<H", tail[pos + 10 : pos + 12])
    if count == 0xFFFF:  # zip64: the real count lives in the zip64 record; zipfile will report it
        return None
    return count


class SafeZip:
    """An open archive whose entries were checked; use `read(entry)` to get bytes within the caps."""

    def __init__(self, path: str | os.PathLike[str], limits: ZipLimits | None = None):
        self.limits = limits or ZipLimits()
        label = os.path.basename(os.fspath(path))
        declared = _eocd_entry_count(path)
        if declared is not None and declared > self.limits.max_entries:
            raise ArchiveRefused(
                f"{label} has {declared} entries; the limit is {self.limits.max_entries}. "
                "Split it into smaller archives."
            )
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise ArchiveRefused(f"{label} is not a readable zip archive ({err}).") from None
        self.label = label
        self.entries: list[ZipEntry] = []
        self.rejected: list[tuple[str, str]] = []
        self._read_total = 0
        try:
            self._check()
        except ArchiveRefused:
            self._zip.close()
            raise

    def _check(self) -> None:
        infos = self._zip.infolist()
        lim = self.limits
        if len(infos) > lim.max_entries:
            raise ArchiveRefused(
                f"{self.label} has {len(infos)} entries; the limit is {lim.max_entries}. "
                "Split it into smaller archives."
            )
        total = compressed = 0
        for info in infos:
            if info.is_dir():
                continue
            reason = unsafe_entry_reason(info)
            if reason:
                self.rejected.append((info.filename, reason))
                continue
            if info.file_size > lim.max_entry_bytes:
                size = f"{info.file_size / 2**20:.0f} MB"
                self.rejected.append((info.filename, f"too large ({size} uncompressed)"))
                continue
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size >= _RATIO_MIN_BYTES and ratio > lim.max_ratio:
                raise ArchiveRefused(
                    f"{self.label}: entry {info.filename!r} expands {ratio:.0f}:1 "
                    f"(limit {lim.max_ratio:.0f}:1); this looks like a zip bomb, so the archive is refused."
                )
            total += info.file_size
            compressed += info.compress_size
            self.entries.append(ZipEntry(info.filename.replace("\\", "/"), info.file_size, info))
        if total > lim.max_total_bytes:
            raise ArchiveRefused(
                f"{self.label} would expand to {total / 2**30:.1f} GB; the limit is "
                f"{lim.max_total_bytes / 2**30:.1f} GB."
            )
        if total >= _RATIO_MIN_BYTES and total / max(compressed, 1) > lim.max_ratio:
            raise ArchiveRefused(
                f"{self.label} expands {total / max(compressed, 1):.0f}:1 overall; "
                "this looks like a zip bomb, so the archive is refused."
            )

    def read(self, entry: ZipEntry, cap: int | None = None) -> bytes:
        """The entry's bytes, streamed: stops as soon as more comes out than declared or allowed.

        Raises ArchiveRefused when the archive lies about sizes (its other entries can't be trusted
        either), DatasetError for a damaged entry.
        """
        limit = min(entry.size, cap if cap is not None else self.limits.max_entry_bytes)
        chunks: list[bytes] = []
        got = 0
        try:
            with self._zip.open(entry.info) as handle:
                while True:
                    chunk = handle.read(_CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                    self._read_total += len(chunk)
                    if got > limit:
                        if got > entry.size:
                            raise ArchiveRefused(
                                f"{self.label}: entry {entry.name!r} holds more data than its header "
                                "declares; the archive is refused."
                            )
                        raise DatasetError(f"too large (over {limit / 2**20:.1f} MB)")
                    if self._read_total > self.limits.max_total_bytes:
                        cap_gb = self.limits.max_total_bytes / 2**30
                        raise ArchiveRefused(f"{self.label} expands beyond {cap_gb:.1f} GB.")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError) as err:
            # zipfile checks the CRC at the end: a header that lies about the size ends up here too.
            raise DatasetError(f"damaged archive entry ({err})") from None
        return b"".join(chunks)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
