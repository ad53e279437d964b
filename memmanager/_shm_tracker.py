"""The SharedMemory tracker: a small process that unlinks the names of
creators that died without unlinking them (SIGKILL, a crash, os._exit).

    creator (C, allocator_shm.c)              this process
    ----------------------------              ------------
    socketpair(SOCK_SEQPACKET) ---- fd 0 ---> main()
    after shm_open(O_EXCL):  b"R/name"  --->  remember (sender pid, name)
    after shm_unlink:        b"U/name"  --->  forget it
    sender pid exits (pidfd readable)   --->  unlink what it left
    every sender gone (EOF)             --->  unlink what is left, exit

The creator starts one tracker per process (allocator_shm.c runs the
command() below with posix_spawn) at its first SharedMemory buffer; a
child made by fork() shares its parent's tracker, and each message
carries its sender's pid in SCM_CREDENTIALS, which the kernel fills in,
so the names of a child that is killed are unlinked when the child dies,
not when the last process holding the socket does.

The process detaches at once (it forks, and the first child exits, so it
is nobody's child: os.wait() in the creator never sees it), starts its own
session, ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or a killed test
runner must not take it down before the creators), closes every other
file descriptor, and answers b"ok" when it is ready.  It runs as
`python -I -S` on this file: no site, no memmanager import, just os and
the C modules _socket, _signal and select (the Python wrappers socket and
signal import enum, which doubles the start-up time).

Only names it was told about are unlinked, each at most once; a name the
creator unlinked itself (b"U") is never touched again.
"""

import os
import sys

ANCILLARY = 64        # room for one SCM_CREDENTIALS (struct ucred)
MESSAGE = 1024        # a message is one byte and a name of < 256 bytes
COALESCE_SECONDS = 0.002


def command(executable=None):
    """The argv allocator_shm.c spawns the tracker with."""
    return [executable or sys.executable, "-I", "-S", os.path.abspath(__file__)]


def _unlink(name):
    try:
        import _posixshmem
        _posixshmem.shm_unlink(name)
    except ImportError:           # pragma: no cover (an interpreter without it)
        try:
            os.unlink("/dev/shm/" + name.lstrip("/"))
        except OSError:
            pass
    except OSError:
        pass                      # already gone: unlinked by someone else


class Tracker:
    """Names per sender pid, and a pidfd per sender to learn when it dies."""

    def __init__(self, poller, select_module):
        self.poller = poller
        self.select = select_module
        self.names = {}           # pid -> set of names (str)
        self.pidfds = {}          # pidfd -> pid

    def watch(self, pid):
        if pid in self.names:
            return True
        self.names[pid] = set()
        if pid <= 0 or not hasattr(os, "pidfd_open"):
            return True           # only the final EOF cleans up its names
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False          # already dead
        except OSError:
            return True
        self.pidfds[fd] = pid
        self.poller.register(fd, self.select.POLLIN)
        return True

    def message(self, data, pid):
        kind, name = data[:1], data[1:].decode("utf-8", "surrogateescape")
        if not name.startswith("/"):
            return
        if kind == b"R":
            alive = self.watch(pid)
            self.names[pid].add(name)
            if not alive:
                self.sender_died(pid)
        elif kind == b"U":
            self.names.get(pid, set()).discard(name)

    def sender_died(self, pid):
        for name in self.names.pop(pid, ()):
            _unlink(name)

    def pidfd_ready(self, fd):
        pid = self.pidfds.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        self.sender_died(pid)

    def finish(self):
        for pid in list(self.names):
            self.sender_died(pid)


def _receive(sock, socket_module):
    """(data, sender pid) of one message; data is b"" at EOF."""
    data, ancillary, _flags, _address = sock.recvmsg(MESSAGE, ANCILLARY)
    pid = 0
    for level, kind, payload in ancillary:
        if (level == socket_module.SOL_SOCKET and
                kind == getattr(socket_module, "SCM_CREDENTIALS", None) and
                len(payload) >= 4):
            pid = int.from_bytes(payload[:4], sys.byteorder, signed=True)
    return data, pid


def _drain(sock, socket_module, tracker):
    """Handles every message waiting; False at EOF (every sender gone)."""
    while True:
        try:
            data, pid = _receive(sock, socket_module)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        tracker.message(data, pid)


def main():
    import _signal as signal
    import _socket as socket
    import select
    import time

    sock = socket.socket(fileno=0)
    if hasattr(socket, "SO_PASSCRED"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if os.fork() != 0:
        os._exit(0)               # the creator reaps this first child
    os.setsid()
    os.chdir("/")
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    os.closerange(3, 1 << 20)

    poller = select.poll()
    poller.register(0, select.POLLIN)
    tracker = Tracker(poller, select)
    sock.sendall(b"ok")
    sock.setblocking(False)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            continue
        # Let a burst of creations and releases queue up (the kernel keeps
        # what a dying sender sent), so that a loop of them costs the
        # creator a send() each, not a switch to this process each.
        time.sleep(COALESCE_SECONDS)
        # Every message first: a sender's last b"R" may still be queued
        # when its pidfd says it died.
        if not _drain(sock, socket, tracker):
            tracker.finish()
            return
        for fd, _event in events:
            if fd != 0 and fd in tracker.pidfds:
                tracker.pidfd_ready(fd)


if __name__ == "__main__":
    main()
