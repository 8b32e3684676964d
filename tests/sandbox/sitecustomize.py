"""Test sandbox: an audit hook that blocks network access and records writes outside allowed folders.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has it, so
putting this folder on ``PYTHONPATH`` reaches every Python process of a run: the main process, the
multiprocessing forkserver (a fresh interpreter that inherits the environment) and its forked
workers (audit hooks survive ``fork``). Nothing happens unless ``NEUROSEG_SANDBOX_LOG`` is set.

Environment:

``NEUROSEG_SANDBOX_LOG``
    file that receives one JSON line per violation (pid, event, path or address, short stack).
``NEUROSEG_SANDBOX_WRITABLE``
    colon-separated folders that may be written to; anything else is a violation (besides
    ``/dev/null``, ``/dev/shm/*`` and ``/proc/*``, which are not files on disk).

Network calls raise ``PermissionError`` (after being recorded) so that nothing leaves the machine.
Writes are only recorded, never refused: the run goes on and the test can list every offender.

Limits (see README.md): audit hooks see what Python and its C extensions do through CPython's own
APIs. Native code that calls libc directly (a C/C++ library writing its own files) and non-Python
child processes are not seen; spawns of non-Python programs are recorded as ``exec`` entries so a
test can tell what escaped the hook.
"""

from __future__ import annotations

import json
import os
import sys

_LOG = os.environ.get("NEUROSEG_SANDBOX_LOG")

# Address-resolving or connecting events. AF_UNIX sockets (multiprocessing's forkserver and
# resource tracker) are local IPC and stay allowed; the other events carry no family and resolve
# names, which is network access in itself (DNS).
_NET_WITH_ADDRESS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
_NET_ALWAYS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}

# Event -> (index of the path argument, index of its dir_fd argument or None). Only the
# os-level events are watched: shutil.* and tempfile.* end in these, so watching both would
# report every write twice. os.rename also covers os.replace; os.remove covers os.unlink.
_PATH_EVENTS = {
    "os.mkdir": (0, 2), "os.remove": (0, 1), "os.rmdir": (0, 1), "os.truncate": (0, None),
    "os.chmod": (0, 2), "os.chown": (0, 3), "os.utime": (0, 3), "os.chflags": (0, None),
    "os.lchflags": (0, None), "os.setxattr": (0, None), "os.removexattr": (0, None),
    "os.symlink": (1, 2),
}
# Both ends of a rename change the file system; only the new name of a link does.
_TWO_PATH_EVENTS = {"os.rename": ((0, 2), (1, 3)), "os.link": ((1, 3),)}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ALWAYS_OK = ("/dev/null",)
_OK_PREFIXES = ("/dev/shm/", "/proc/")

# Thread ids currently inside the hook: the hook's own file and stack work raises audit events
# too, and recording those would recurse. A set of thread ids rather than one bool so that a
# write made by another thread at the same moment is still seen.
_busy: set[int] = set()


def _resolve(path, dir_fd=None) -> str | None:
    """Absolute, symlink-free form of an audited path; None for file descriptors."""
    if isinstance(path, int) or path is None:
        return None  # an fd: its file was audited when it was opened
    path = os.fsdecode(os.fspath(path))
    if not os.path.isabs(path):
        base = os.getcwd()
        if isinstance(dir_fd, int) and dir_fd >= 0:
            try:  # e.g. shutil.rmtree removes entries relative to an open directory
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                base = f"<fd {dir_fd}>"
        path = os.path.join(base, path)
    # realpath, so that a symlink inside an allowed folder cannot hide a write outside it.
    return os.path.realpath(path)


def _allowed_roots() -> tuple[str, ...]:
    # Read on every check: the value is tiny, and a test may set it after start-up in-process.
    raw = os.environ.get("NEUROSEG_SANDBOX_WRITABLE", "")
    return tuple(os.path.realpath(p) for p in raw.split(":") if p)


def _write_allowed(path: str) -> bool:
    if path in _ALWAYS_OK or path.startswith(_OK_PREFIXES):
        return True
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in _allowed_roots())


def _record(event: str, **details) -> None:
    import traceback  # here, under the guard: a process without violations never pays for it

    # Drop the sandbox's own frames and importlib's (they say nothing about who imported what);
    # keep the few nearest the offending call (NEUROSEG_SANDBOX_FRAMES=50 to see who called it).
    frames = [f for f in traceback.extract_stack()
              if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
    frames = frames[-int(os.environ.get("NEUROSEG_SANDBOX_FRAMES", "10")):]
    # ppid and cmdline tell the main process, the forkserver and its workers apart.
    entry = {"pid": os.getpid(), "ppid": os.getppid(), "cmdline": " ".join(sys.argv)[:120], "event": event,
             **details,
             "stack": [f"{f.filename}:{f.lineno} {f.name}: {(f.line or '').strip()}" for f in frames]}
    line = (json.dumps(entry, default=repr) + "\n").encode()
    # os.open/os.write, not open(): no buffering to lose in a forked worker that exits with _exit.
    try:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        # Never let the sandbox change the app's behaviour; say loudly on stderr instead, where
        # the test looks for this prefix.
        os.write(2, f"neuroseg-sandbox: cannot record a violation in {_LOG}: {exc}\n".encode() + line)


def _check_path(event: str, path, dir_fd=None, **details) -> None:
    resolved = _resolve(path, dir_fd)
    if resolved is not None and not _write_allowed(resolved):
        _record(event, path=resolved, **details)


class _Blocked(PermissionError):
    """The one exception the hook means to raise into the app."""


def _hook(event: str, args: tuple) -> None:
    tid = _get_ident()
    if tid in _busy:
        return
    _busy.add(tid)
    try:
        _handle(event, args)
    except _Blocked:
        raise
    except Exception as exc:  # a bug here (or a deleted cwd) must not become the app's error
        os.write(2, f"neuroseg-sandbox: hook failed on {event}: {exc!r}\n".encode())
    finally:
        _busy.discard(tid)


def _handle(event: str, args: tuple) -> None:
    if event == "open":
        # os.open(..., dir_fd=) does not pass dir_fd to this event; a relative path is taken
        # against the cwd, which is what every caller in this app does.
        path, mode, flags = args
        writes = (flags & _WRITE_FLAGS) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
        if writes:
            _check_path(event, path, mode=mode, flags=flags)
    elif event in _PATH_EVENTS:
        where, fd_at = _PATH_EVENTS[event]
        _check_path(event, args[where], args[fd_at] if fd_at is not None else None)
    elif event in _TWO_PATH_EVENTS:
        for where, fd_at in _TWO_PATH_EVENTS[event]:
            _check_path(event, args[where], args[fd_at])
    elif event in _NET_WITH_ADDRESS:
        sock, address = args[0], args[1]
        if isinstance(address, (str, bytes, bytearray)) or getattr(sock, "family", None) == _AF_UNIX:
            # A Unix socket is local IPC, but binding one creates a file (abstract names, which
            # start with NUL, do not): audit it like any other write.
            if event == "socket.bind" and address and address[:1] not in ("\0", b"\0"):
                _check_path(event, address)
            return
        if event == "socket.bind" and isinstance(address, tuple) and address[:2] in (("::1", 0), ("127.0.0.1", 0)):
            # urllib3 (imported through MONAI) probes IPv6 support by binding an ephemeral loopback
            # port: no packet can leave the machine, so it is allowed; connections never are.
            return
        _record(event, address=address)
        raise _Blocked("network blocked by the neuroseg test sandbox")
    elif event in _NET_ALWAYS:
        _record(event, address=args)
        raise _Blocked("network blocked by the neuroseg test sandbox")
    elif event in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
        # Python children inherit PYTHONPATH and so this hook; other programs are invisible to it.
        argv = args[1]
        argv = [argv] if isinstance(argv, (str, bytes)) else list(argv or [])
        executable = os.fsdecode(os.fspath(args[0] if args[0] is not None else argv[0]))
        if not os.path.basename(executable).startswith("python") and executable != sys.executable:
            _record("exec", executable=executable, argv=[os.fsdecode(a) if isinstance(a, bytes) else str(a)
                                                         for a in argv])


if _LOG:
    from _thread import get_ident as _get_ident

    _AF_UNIX = 1  # socket.AF_UNIX on Linux and macOS; not imported, to keep start-up untouched
    sys.addaudithook(_hook)
