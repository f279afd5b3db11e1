"""A local, fsynced, ordered spool of Kafka records for when Kafka cannot take them.

Records are appended to numbered segment files (``<n>.seg``) and made durable in groups
with one ``fsync`` (``append`` then ``sync``). A drainer reads them back in order
(``read``), and only after Kafka has confirmed delivery of a prefix does it ``commit``
the position (file ``drained``, replaced atomically). Segments wholly before the
committed position are deleted; ``reset`` starts a fresh segment once everything has
been delivered. A restart resumes from the committed position, so nothing that was
acknowledged is lost; records delivered but not yet committed when the process died
are delivered again (at least once).

Record format: ``crc32(key + value) u32 | len(key) u16 | len(value) u32 | key | value``
(big-endian). A torn record at the end of the newest segment (a crash during a write
that was never fsynced, so never acknowledged) is cut off at start.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IHI")
SEGMENT_MAX_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class SpoolError(OSError):
    """The spool could not be written, or its files are damaged."""


Position = tuple[int, int]  # (segment number, byte offset)


class Spool:
    """An append-only, crash-safe queue of ``(key, value)`` byte records in a folder."""

    def __init__(self, directory: Path, segment_max_bytes: int = SEGMENT_MAX_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_max = segment_max_bytes
        self._pos_path = self.dir / "drained"
        self._buffer: list[bytes] = []
        self._buffered_records = 0

        segments = self._segments()
        committed = self._read_position()
        if committed is None:
            committed = (segments[0] if segments else 1, 0)
        for seg in [s for s in segments if s < committed[0]]:
            self._segment_path(seg).unlink()  # drained before the last crash
        segments = [s for s in segments if s >= committed[0]]
        if committed[0] not in segments:
            committed = (segments[0] if segments else committed[0], 0)
        elif committed[1] > self._segment_size(committed[0]):
            raise SpoolError(f"{self._pos_path} points past the end of its segment")
        self.committed: Position = committed
        self.depth = 0  # records written and synced, not yet committed as delivered
        for seg in segments:
            start = committed[1] if seg == committed[0] else 0
            self.depth += self._scan(seg, start, last=(seg == segments[-1]))

        self._write_seg = segments[-1] if segments else committed[0]
        self._file = open(self._segment_path(self._write_seg), "ab")
        if not segments:
            self._fsync_dir()
        self._write_off = self._file.tell()  # synced end of the newest segment
        self._reader: Position = self.committed
        self._read_fds: dict[int, int] = {}
        if self.depth:
            log.info("spool %s holds %d record(s) not yet delivered", self.dir, self.depth)

    # -- writing -------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> None:
        """Buffer a record; it is durable only after the next ``sync``."""
        self._buffer.append(_HEADER.pack(zlib.crc32(value, zlib.crc32(key)), len(key),
                                         len(value)) + key + value)
        self._buffered_records += 1

    def sync(self) -> int:
        """Write and fsync the buffered records (one fsync); return how many.

        On failure the segment is cut back to its last synced size and ``SpoolError``
        is raised: none of the buffered records is durable.
        """
        n = self._buffered_records
        if not n:
            return 0
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered_records = 0
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._undo_write()
            raise SpoolError(f"writing the spool failed: {exc}") from exc
        self._write_off += len(data)
        self.depth += n
        if self._write_off >= self._segment_max:
            self._roll()
        return n

    def _undo_write(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.truncate(self._segment_path(self._write_seg), self._write_off)
        except OSError:
            log.exception("could not cut the spool segment back after a failed write")
        self._file = open(self._segment_path(self._write_seg), "ab")

    def _roll(self) -> None:
        self._file.close()
        self._write_seg += 1
        self._file = open(self._segment_path(self._write_seg), "ab")
        self._write_off = 0
        self._fsync_dir()

    # -- draining ------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """Nothing buffered and everything synced has been committed as delivered."""
        return not self._buffered_records and self.depth == 0

    @property
    def all_read(self) -> bool:
        """The reader is at the end of what has been synced."""
        return self._reader == (self._write_seg, self._write_off)

    @property
    def clean(self) -> bool:
        """Nothing left to delete: empty, on a fresh segment."""
        return self.empty and self.committed == (self._write_seg, 0) == self._reader \
            and self._write_off == 0

    def read(self, max_records: int) -> list[tuple[bytes, bytes, Position]]:
        """The next synced records after the reader position, with each one's end."""
        out: list[tuple[bytes, bytes, Position]] = []
        while len(out) < max_records:
            seg, off = self._reader
            end = self._write_off if seg == self._write_seg else self._segment_size(seg)
            if off >= end:
                if seg < self._write_seg:
                    self._close_reader(seg)
                    self._reader = (seg + 1, 0)
                    continue
                break
            chunk = os.pread(self._reader_fd(seg), min(_READ_CHUNK, end - off), off)
            i = 0
            while len(out) < max_records and i + _HEADER.size <= len(chunk):
                crc, klen, vlen = _HEADER.unpack_from(chunk, i)
                rec_end = i + _HEADER.size + klen + vlen
                if rec_end > len(chunk):
                    if i == 0:  # a record bigger than the chunk
                        chunk = os.pread(self._reader_fd(seg), rec_end, off)
                        continue
                    break
                key = chunk[i + _HEADER.size:i + _HEADER.size + klen]
                value = chunk[i + _HEADER.size + klen:rec_end]
                if zlib.crc32(value, zlib.crc32(key)) != crc:
                    raise SpoolError(f"spool segment {seg} is damaged at offset {off + i}")
                out.append((key, value, (seg, off + rec_end)))
                i = rec_end
            self._reader = (seg, off + i)
        return out

    def rewind(self) -> None:
        """Read again from the committed position (after a failed delivery)."""
        self._reader = self.committed

    def commit(self, position: Position, records: int) -> None:
        """Record that everything up to ``position`` (``records`` records) is delivered."""
        self._write_position(position)
        old = self.committed[0]
        self.committed = position
        self.depth -= records
        for seg in range(old, position[0]):
            self._close_reader(seg)
            self._segment_path(seg).unlink(missing_ok=True)

    def reset(self) -> None:
        """Start a fresh segment once everything written has been delivered."""
        if not self.empty:
            raise SpoolError("the spool still holds undelivered records")
        old = self._write_seg
        self._file.close()
        self._write_seg = old + 1
        self._write_off = 0
        self._file = open(self._segment_path(self._write_seg), "ab")
        self._write_position((self._write_seg, 0))
        self.committed = self._reader = (self._write_seg, 0)
        for seg in list(self._read_fds):
            self._close_reader(seg)
        for seg in self._segments():
            if seg < self._write_seg:
                self._segment_path(seg).unlink(missing_ok=True)
        self._fsync_dir()

    def close(self) -> None:
        for seg in list(self._read_fds):
            self._close_reader(seg)
        self._file.close()

    # -- files ---------------------------------------------------------------------

    def _segment_path(self, seg: int) -> Path:
        return self.dir / f"{seg:010d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _segment_size(self, seg: int) -> int:
        try:
            return self._segment_path(seg).stat().st_size
        except FileNotFoundError:
            return 0

    def _reader_fd(self, seg: int) -> int:
        fd = self._read_fds.get(seg)
        if fd is None:
            fd = self._read_fds[seg] = os.open(self._segment_path(seg), os.O_RDONLY)
        return fd

    def _close_reader(self, seg: int) -> None:
        fd = self._read_fds.pop(seg, None)
        if fd is not None:
            os.close(fd)

    def _read_position(self) -> Position | None:
        try:
            seg, off = self._pos_path.read_text().split()
            return int(seg), int(off)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise SpoolError(f"{self._pos_path} is damaged") from exc

    def _write_position(self, position: Position) -> None:
        tmp = self._pos_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{position[0]} {position[1]}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._pos_path)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _scan(self, seg: int, start: int, last: bool) -> int:
        """Count the valid records of a segment from ``start``; cut a torn tail off
        the newest segment."""
        path = self._segment_path(seg)
        data = path.read_bytes()
        i, count = start, 0
        while i < len(data):
            ok = i + _HEADER.size <= len(data)
            if ok:
                crc, klen, vlen = _HEADER.unpack_from(data, i)
                body = i + _HEADER.size
                end = body + klen + vlen
                ok = end <= len(data) and zlib.crc32(
                    data[body + klen:end], zlib.crc32(data[body:body + klen])) == crc
            if not ok:
                if not last:
                    raise SpoolError(f"spool segment {path.name} is damaged at offset {i}")
                log.warning("spool %s: cutting off a torn record at offset %d (never "
                            "acknowledged)", path.name, i)
                os.truncate(path, i)
                break
            count += 1
            i = end
        return count
