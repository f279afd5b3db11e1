"""A local, fsynced, ordered spool of Kafka records for when Kafka cannot take them.

Records are appended to numbered segment files (``<n>.seg``). Durability is a group
commit that does not stop the caller: ``write()`` puts the buffered records into the
segment (page cache) and returns a ticket; a syncer thread fsyncs everything written so
far, in one ``fsync`` however many records that is, and publishes ``synced`` (records
durable so far) — the caller answers a request only once ``synced`` has passed its
ticket. ``sync()`` does both and waits.

A drainer reads the durable records back in order (``read``), and only after Kafka has
confirmed delivery of a prefix does it ``commit`` the position (file ``drained``,
replaced atomically). Segments wholly before the committed position are deleted;
``reset`` starts a fresh segment once everything has been delivered. A restart resumes
from the committed position, so nothing that was acknowledged is lost; records
delivered but not yet committed when the process died are delivered again (at least
once).

Record format: ``crc32(key + value) u32 | len(key) u16 | len(value) u32 | key | value``
(big-endian). A torn record at the end of the newest segment (a crash during a write
that was never fsynced, so never acknowledged) is cut off at start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
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
    """An append-only, crash-safe queue of ``(key, value)`` byte records in a folder.

    One thread appends, writes, reads and commits; the syncer thread only fsyncs.
    ``wakeup_fd`` (optional, settable later) gets a byte after every fsync, for a poll
    loop to wait on.
    """

    def __init__(self, directory: Path, segment_max_bytes: int = SEGMENT_MAX_BYTES,
                 wakeup_fd: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"the spool {self.dir} is in use by another process") from None
        self._segment_max = segment_max_bytes
        self._pos_path = self.dir / "drained"
        self.wakeup_fd = wakeup_fd
        self._buffer: list[bytes] = []

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
        self._base_depth = 0  # records found at start, not yet delivered
        for seg in segments:
            start = committed[1] if seg == committed[0] else 0
            self._base_depth += self._scan(seg, start, last=(seg == segments[-1]))

        self._write_seg = segments[-1] if segments else committed[0]
        self._fd = self._open_segment(self._write_seg)
        self._write_off = os.lseek(self._fd, 0, os.SEEK_END)
        self._written = 0  # records written since start (tickets)
        self._committed_records = 0  # records committed as delivered since start
        self._reader: Position = self.committed
        self._read_fds: dict[int, int] = {}

        # shared with the syncer thread, under _lock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._target: tuple[int, Position] = (0, (self._write_seg, self._write_off))
        self._dirty: list[int] = []  # fds with unsynced writes (rolled ones are closed)
        self._dir_dirty = not segments
        self._synced = 0
        self._synced_end: Position = (self._write_seg, self._write_off)
        self._busy = False
        self._error: SpoolError | None = None
        self._closing = False
        self._syncer = threading.Thread(target=self._sync_loop, name="spool-fsync",
                                        daemon=True)
        self._syncer.start()
        if self._base_depth:
            log.info("spool %s holds %d record(s) not yet delivered", self.dir,
                     self._base_depth)

    # -- writing -------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> None:
        """Buffer a record; ``write`` hands it to the syncer."""
        self._buffer.append(_HEADER.pack(zlib.crc32(value, zlib.crc32(key)), len(key),
                                         len(value)) + key + value)

    def write(self) -> int:
        """Write the buffered records and have them fsynced; return the ticket that
        ``synced`` reaches once they are durable. Raises ``SpoolError`` after a failure
        (the spool then refuses everything: nothing after it can be trusted)."""
        if self._error is not None:
            self._buffer.clear()
            raise self._error
        if not self._buffer:
            return self._written
        data = b"".join(self._buffer)
        n = len(self._buffer)
        self._buffer.clear()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._fail(SpoolError(f"writing the spool failed: {exc}"))
            raise self._error from exc
        self._written += n
        self._write_off += len(data)
        with self._lock:
            if self._fd not in self._dirty:
                self._dirty.append(self._fd)
            if self._write_off >= self._segment_max:
                self._write_seg += 1
                self._write_off = 0
                self._fd = self._open_segment(self._write_seg)
                self._dir_dirty = True
            self._target = (self._written, (self._write_seg, self._write_off))
            self._changed.notify()
        return self._written

    @property
    def synced(self) -> int:
        """Tickets up to this one are durable."""
        return self._synced

    @property
    def error(self) -> SpoolError | None:
        return self._error

    def sync(self) -> int:
        """Write the buffered records and wait until they are durable; return how many."""
        before = self._written
        ticket = self.write()
        with self._lock:
            while self._synced < ticket and self._error is None:
                self._changed.wait()
        if self._error is not None:
            raise self._error
        return ticket - before

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and self._target[0] <= self._synced:
                    self._changed.wait()
                if self._target[0] <= self._synced:
                    return  # closing, all synced
                target, end = self._target
                fds, self._dirty = self._dirty, []
                sync_dir, self._dir_dirty = self._dir_dirty, False
                current = self._fd
                self._busy = True
            try:
                for fd in fds:
                    os.fsync(fd)
                if sync_dir:
                    self._fsync_dir()
            except OSError as exc:
                self._fail(SpoolError(f"fsync of the spool failed: {exc}"))
                return
            with self._lock:
                self._synced = target
                self._synced_end = end
                self._busy = False
                for fd in fds:
                    if fd != current and fd != self._fd:
                        os.close(fd)  # a rolled segment, now durable
                self._changed.notify_all()
            self._wake()

    def _fail(self, error: SpoolError) -> None:
        log.error("%s: the spool takes no more records", error)
        with self._lock:
            self._error = error
            self._busy = False
            self._changed.notify_all()
        self._wake()

    def _wake(self) -> None:
        if self.wakeup_fd is not None:
            try:
                os.write(self.wakeup_fd, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: the loop is awake anyway

    # -- draining ------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records durable in the spool and not yet committed as delivered."""
        return self._base_depth + self._synced - self._committed_records

    @property
    def empty(self) -> bool:
        """Nothing buffered or being synced, and everything committed as delivered."""
        return not self._buffer and self._written == self._synced and self.depth == 0

    @property
    def all_read(self) -> bool:
        """The reader is at the end of what has been written."""
        return self._reader == (self._write_seg, self._write_off)

    @property
    def clean(self) -> bool:
        """Nothing left to delete: empty, on a fresh segment."""
        return self.empty and self.committed == (self._write_seg, 0) == self._reader \
            and self._write_off == 0

    def read(self, max_records: int) -> list[tuple[bytes, bytes, Position]]:
        """The next durable records after the reader position, with each one's end."""
        out: list[tuple[bytes, bytes, Position]] = []
        synced_seg, synced_off = self._synced_end
        while len(out) < max_records:
            seg, off = self._reader
            if seg > synced_seg:
                break
            end = synced_off if seg == synced_seg else self._segment_size(seg)
            if off >= end:
                if seg < synced_seg:
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
        self._committed_records += records
        for seg in range(old, position[0]):
            self._close_reader(seg)
            self._segment_path(seg).unlink(missing_ok=True)

    def reset(self) -> None:
        """Start a fresh segment once everything written has been delivered."""
        with self._lock:
            if not self.empty or self._busy:
                raise SpoolError("the spool still holds undelivered records")
            old = self._write_seg
            os.close(self._fd)
            self._write_seg = old + 1
            self._write_off = 0
            self._fd = self._open_segment(self._write_seg)
            self._write_position((self._write_seg, 0))
            self.committed = self._reader = (self._write_seg, 0)
            self._target = (self._written, self.committed)
            self._synced_end = self.committed
            self._dirty = []
        for seg in list(self._read_fds):
            self._close_reader(seg)
        for seg in self._segments():
            if seg < self._write_seg:
                self._segment_path(seg).unlink(missing_ok=True)
        self._fsync_dir()

    def close(self) -> None:
        """Sync what was written, stop the syncer, close the files."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._syncer.join(timeout=30)
        for seg in list(self._read_fds):
            self._close_reader(seg)
        for fd in set(self._dirty) | {self._fd}:
            try:
                os.close(fd)
            except OSError:
                pass
        os.close(self._lock_fd)  # releases the lock

    # -- files ---------------------------------------------------------------------

    def _segment_path(self, seg: int) -> Path:
        return self.dir / f"{seg:010d}.seg"

    def _open_segment(self, seg: int) -> int:
        return os.open(self._segment_path(seg), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                       0o600)

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
