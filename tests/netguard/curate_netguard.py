"""The test run's network guard: no socket past loopback, no DNS lookup of a name not our own.

tests/conftest.py installs it in the pytest process and, through sitecustomize.py in this folder
(put first on PYTHONPATH), in every Python child: `curate` CLI runs, spark-submit drivers, Spark's
Python workers, img2dataset's worker processes, the Airflow environment. A blocked call raises
an OSError, and is also appended as one JSON line to the file named by CURATE_NETGUARD_LOG,
because libraries often swallow the error (albumentations' update check does): the record is
what fails the test. Pure standard library: it runs in any of the project's interpreters.
Non-Python processes (the JVM, Chromium) are not covered.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import sysconfig
import traceback

LOG_ENV = "CURATE_NETGUARD_LOG"
# Optional, to see what a run talks to: every allowed connection and lookup, one line each.
TRACE_ENV = "CURATE_NETGUARD_TRACE"

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_REAL: dict[str, object] = {}
_HOSTNAME: list[str] = []


class NetworkBlocked(ConnectionRefusedError):
    """A connection or datagram to an address outside loopback, stopped before it was sent."""


class LookupBlocked(socket.gaierror):
    """A DNS lookup of a name that only a name server could answer, stopped before it was sent."""


def _append(path: str, entry: dict) -> None:
    # One write of one line with O_APPEND: lines from concurrent processes do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def _caller() -> list[str]:
    """Who tried to reach out, innermost last: the last frames outside the standard library
    (http.client, urllib, socket say only how), then the innermost standard-library frame."""
    frames = [f for f in traceback.extract_stack() if f.filename != __file__ and not f.filename.startswith("<frozen")]
    stdlib = sysconfig.get_paths()["stdlib"]
    ours = [f for f in frames if not f.filename.startswith(stdlib) or "-packages" in f.filename][-6:]
    tail = frames[-1:] if frames and (not ours or frames[-1] is not ours[-1]) else []
    return [f"{f.filename}:{f.lineno} {f.name}" for f in ours + tail]


def record(what: str, target: str) -> dict:
    """Append one violation to the log named by $CURATE_NETGUARD_LOG (read now); returns the entry."""
    entry = {"what": what, "target": target, "pid": os.getpid(), "argv": " ".join(sys.argv)[:300], "stack": _caller()}
    path = os.environ.get(LOG_ENV)
    if path:
        _append(path, entry)
    return entry


def _trace(what: str, target: str) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        _append(path, {"what": what, "target": target, "pid": os.getpid(), "argv": " ".join(sys.argv)[:300]})


def is_local_address(host) -> bool | None:
    """True for a loopback (or unspecified) IP literal, False for any other IP, None for a name."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # The other IPv4 spellings getaddrinfo reads without a name server (inet_aton's):
        # 2130706433, 127.1, 0x7f.0.0.1.
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # 0.0.0.0 and :: as a destination mean this host on Linux: nothing leaves the machine.
    return ip.is_loopback or ip.is_unspecified


def is_local_name(host) -> bool:
    """Whether looking `host` up needs no name server: an IP literal, localhost, our own hostname."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = host.strip().lower().rstrip(".")
    if not name or is_local_address(name) is not None:
        return True
    return name in _LOCAL_NAMES or name.endswith(".localhost") or name in _HOSTNAME


def is_local_host(host) -> bool:
    """Whether `host` (an address or a name) is this machine, known without a name server."""
    local = is_local_address(host)
    return local is True or (local is None and is_local_name(host))


def _check_address(sock, address, what: str) -> bool:
    """Whether `address` may be reached from `sock`; a violation is recorded (and traced)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or not address:
        return True  # Unix sockets, netlink: they stay on the machine
    host, target = address[0], f"{address[0]}:{address[1] if len(address) > 1 else ''}"
    if is_local_host(host):
        _trace(what, target)
        return True
    record(what, target)
    return False


def _blocked(what: str, target) -> NetworkBlocked:
    return NetworkBlocked(errno.ECONNREFUSED, f"network guard (tests): {what} to {target} is outside loopback")


def _connect(self, address):
    if not _check_address(self, address, "connect"):
        raise _blocked("connect", address)
    return _REAL["connect"](self, address)


def _connect_ex(self, address):
    # connect_ex reports failure as an errno, never raises: keep that contract.
    if not _check_address(self, address, "connect"):
        return errno.ENETUNREACH
    return _REAL["connect_ex"](self, address)


def _sendto(self, data, *args):
    address = args[-1] if args else None  # sendto(data, address) or sendto(data, flags, address)
    if not _check_address(self, address, "sendto"):
        raise _blocked("sendto", address)
    return _REAL["sendto"](self, data, *args)


def _sendmsg(self, buffers, *args):
    address = args[2] if len(args) > 2 else None  # sendmsg(buffers, ancdata, flags, address)
    if address is not None and not _check_address(self, address, "sendmsg"):
        raise _blocked("sendmsg", address)
    return _REAL["sendmsg"](self, buffers, *args)


def _lookup(name: str):
    real = _REAL[name]
    # A forward lookup of an IP literal needs no name server; a reverse one (of any address
    # outside loopback) asks DNS for its PTR record.
    allowed = is_local_host if name == "gethostbyaddr" else is_local_name

    def guarded(host, *args, **kwargs):
        if not allowed(host):
            record(name, str(host))
            raise LookupBlocked(socket.EAI_NONAME, f"network guard (tests): DNS lookup of {host!r} blocked")
        _trace(name, str(host))
        return real(host, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = real.__doc__
    return guarded


def _getnameinfo(sockaddr, flags):
    # A reverse lookup (flags without NI_NUMERICHOST) of an address outside loopback asks DNS.
    host = sockaddr[0] if isinstance(sockaddr, tuple) and sockaddr else None
    if not flags & socket.NI_NUMERICHOST and not is_local_host(host):
        record("getnameinfo", str(host))
        raise LookupBlocked(socket.EAI_NONAME, f"network guard (tests): reverse lookup of {host!r} blocked")
    return _REAL["getnameinfo"](sockaddr, flags)


_METHODS = {"connect": _connect, "connect_ex": _connect_ex, "sendto": _sendto, "sendmsg": _sendmsg}
_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")


def install() -> None:
    """Patch socket's connecting, sending and resolving calls in this process (idempotent)."""
    if _REAL:
        return
    _HOSTNAME.append(socket.gethostname().lower())
    for name, guarded in _METHODS.items():
        if hasattr(socket.socket, name):
            _REAL[name] = getattr(socket.socket, name)
            setattr(socket.socket, name, guarded)
    for name in _LOOKUPS:
        _REAL[name] = getattr(socket, name)
        setattr(socket, name, _lookup(name))
    _REAL["getnameinfo"] = socket.getnameinfo
    socket.getnameinfo = _getnameinfo
    _trace("install", sys.executable)


def uninstall() -> None:
    """Put socket's own calls back."""
    for name, real in _REAL.items():
        setattr(socket.socket if name in _METHODS else socket, name, real)
    _REAL.clear()
    _HOSTNAME.clear()


def installed() -> bool:
    return bool(_REAL)
