"""The URL guard: a pool's URLs are untrusted input, so never fetch what could reach inside the network.

A URL is refused, before any request, when
- its scheme is not http or https (file://, ftp://, gopher://, data: ... are refused);
- it carries credentials (`user:pass@host`): a dataset has no business holding them, and the
  userinfo part is the classic way to make a URL look like it points somewhere else
  (`http://images.example.com@10.0.0.1/`);
- its host is a known cloud-metadata name (metadata.google.internal, ...);
- its host does not resolve (getaddrinfo), or ANY address it resolves to is loopback, private,
  link-local, multicast, unspecified, reserved, otherwise not globally routable, or a
  cloud-metadata address (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...), or IPv6
  site-local (fec0::/10). IPv4-mapped and 6to4 IPv6 addresses are judged by their IPv4 address.

The same policy is enforced again at connection time inside the download workers
(`build_opener`): every TCP connection the opener makes, the ones that follow redirects
included, resolves the host once, checks every address, and connects only to a checked address,
so a redirect to an internal address or a DNS answer that changed after the first check
(rebinding) cannot slip through. Redirect targets are also checked for scheme and credentials.

Exceptions are explicit: `allow` lists hosts ("images.internal"), addresses ("127.0.0.1") or
networks ("10.0.0.0/8") that are allowed even though they are not public (a listed name lifts the
address checks for that name; a listed address or network allows exactly those addresses), and
`allow_private` switches the address checks off altogether (scheme and credential checks stay).
Through an HTTP proxy (the http_proxy/https_proxy environment variables) the connection goes
to the proxy, whose address is checked like any other: allow it explicitly when it is internal.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

# The prefix of every refusal raised in the workers, so the stage can tell a refused redirect
# (url_refused) from a failed download in img2dataset's error_message.
REFUSED_PREFIX = "url_refused: "
SCHEMES = ("http", "https")
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class URLRefused(ValueError):
    """Raised inside a download worker when a connection or redirect is refused by the guard.

    A ValueError, not an OSError, so urllib passes it through unwrapped and img2dataset records
    its message (which starts with REFUSED_PREFIX) as the sample's error.
    """


def parse_allow_list(items: Iterable[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    """Split allow entries into host names (lowercased) and networks; raise ValueError on junk."""
    names: set[str] = set()
    networks: list[Network] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            raise ValueError("empty entry")
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = item.lower().rstrip(".")
        if "/" in name or ":" in name or " " in name:
            raise ValueError(f"{item!r} is neither a host name nor an IP address or network")
        names.add(name)
    return frozenset(names), tuple(networks)


def address_kind(addr: Address) -> str | None:
    """Why this address may not be fetched from (None: it is a public address)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv6Address):
        # 6to4 (2002::/16) names the IPv4 host a relay forwards to, and Python calls the whole
        # prefix global: judged by that IPv4 address, like a mapped one.
        inner = address_kind(addr.sixtofour) if addr.sixtofour is not None else None
        if inner is not None:
            return inner
        # fec0::/10, site-local: deprecated (RFC 3879) yet still routed inside some networks,
        # and global to Python.
        if addr.is_site_local:
            return "site-local"
    if addr in METADATA_ADDRESSES:
        return "cloud metadata"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    if not addr.is_global:
        return "non-public (special-purpose)"
    return None


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard lets through; picklable, so it travels to img2dataset's worker processes."""

    allow: tuple[str, ...] = ()
    allow_private: bool = False
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, networks = parse_allow_list(self.allow)
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_networks", networks)

    def host_allowed_by_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._names

    def address_refusal(self, addr: Address) -> str | None:
        """Why `addr` is refused (None: allowed)."""
        if any(addr.version == n.version and addr in n for n in self._networks):
            return None
        kind = address_kind(addr)
        if kind is None or (self.allow_private and kind != "cloud metadata"):
            return None
        return kind

    def resolve(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo(host, port) if every address is allowed; raise URLRefused naming the first refused."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise URLRefused(f"{REFUSED_PREFIX}unresolvable host {host!r} ({exc})") from None
        if not infos:
            raise URLRefused(f"{REFUSED_PREFIX}unresolvable host {host!r} (no address)")
        if self.host_allowed_by_name(host):
            return infos
        for info in infos:
            addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            kind = self.address_refusal(addr)
            if kind is not None:
                raise URLRefused(f"{REFUSED_PREFIX}host {host!r} resolves to a {kind} address ({addr})")
        return infos

    def check_url(self, url: object) -> str | None:
        """Why `url` is refused, without the prefix (None: it may be fetched)."""
        try:
            self.check_url_static(url)
            host, port = _host_port(url)  # type: ignore[arg-type]
            self.resolve(host, port)
        except URLRefused as exc:
            return str(exc)[len(REFUSED_PREFIX):]
        return None

    def check_url_static(self, url: object) -> None:
        """The checks that need no DNS: scheme, credentials, host present, metadata names."""
        if not isinstance(url, str) or not url.strip():
            raise URLRefused(f"{REFUSED_PREFIX}no URL")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise URLRefused(f"{REFUSED_PREFIX}unparseable URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise URLRefused(f"{REFUSED_PREFIX}scheme {repr(scheme) if scheme else '(none)'} is not http or https")
        if parts.username is not None or parts.password is not None:
            raise URLRefused(f"{REFUSED_PREFIX}credentials in the URL")
        host = parts.hostname
        if not host:
            raise URLRefused(f"{REFUSED_PREFIX}no host in the URL")
        if port == 0:
            raise URLRefused(f"{REFUSED_PREFIX}port 0")
        name = host.lower().rstrip(".")
        if name in METADATA_HOSTS and not self.host_allowed_by_name(name):
            raise URLRefused(f"{REFUSED_PREFIX}host {host!r} is a cloud metadata name")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url.strip())
    default = 443 if parts.scheme.lower() == "https" else 80
    return parts.hostname or "", parts.port or default


def check_hosts(urls: Iterable[object], policy: GuardPolicy, threads: int = 16) -> list[str | None]:
    """check_url for many URLs: the DNS work is done once per distinct (host, port), in threads."""
    from concurrent.futures import ThreadPoolExecutor

    urls = list(urls)
    out: list[str | None] = [None] * len(urls)
    pending: dict[tuple[str, int], list[int]] = {}
    for i, url in enumerate(urls):
        try:
            policy.check_url_static(url)
            pending.setdefault(_host_port(url), []).append(i)  # type: ignore[arg-type]
        except URLRefused as exc:
            out[i] = str(exc)[len(REFUSED_PREFIX):]

    def verdict(key: tuple[str, int]) -> str | None:
        try:
            policy.resolve(*key)
        except URLRefused as exc:
            return str(exc)[len(REFUSED_PREFIX):]
        return None

    keys = list(pending)
    with ThreadPoolExecutor(max(1, min(threads, len(keys)))) as pool:
        for key, why in zip(keys, pool.map(verdict, keys), strict=True):
            for i in pending[key]:
                out[i] = why
    return out


# --------------------------------------------------------------------------- connection time


def _guarded_create_connection(policy: GuardPolicy):
    """A drop-in for socket.create_connection that connects only to addresses the policy allows."""

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        infos = policy.resolve(host, port)  # raises URLRefused before any packet is sent
        error: OSError | None = None
        for family, socktype, proto, _canon, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error if error is not None else OSError(f"could not connect to {host}:{port}")

    return create_connection


def _connection_factory(cls: type, policy: GuardPolicy):
    def make(host, **kwargs):
        conn = cls(host, **kwargs)
        # http.client opens its socket through this attribute (HTTPS wraps it afterwards with
        # the host name for SNI and certificate checks, so TLS is unchanged).
        conn._create_connection = _guarded_create_connection(policy)
        return conn

    return make


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: GuardPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(_connection_factory(http.client.HTTPConnection, self.policy), req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: GuardPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        return self.do_open(
            _connection_factory(http.client.HTTPSConnection, self.policy), req, context=self._context
        )


class GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when its target passes the whole check (the connection is checked again)."""

    def __init__(self, policy: GuardPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_error_302(self, req, fp, code, msg, headers):
        # Checked before urllib's own handling, which answers a file:// target with a
        # plain HTTPError that would read as a failed download rather than a refusal.
        target = headers.get("location") or headers.get("uri")
        if target:
            newurl = urljoin(req.full_url, target)
            why = self.policy.check_url(newurl)
            if why is not None:
                fp.close()
                raise URLRefused(f"{REFUSED_PREFIX}redirect to {newurl}: {why}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener(policy: GuardPolicy) -> urllib.request.OpenerDirector:
    """An opener for http(s) only, guarded at every connection and redirect.

    Unlike urllib's default it has no file://, ftp:// or data: handlers, so nothing but http(s)
    can be opened, whatever a redirect says.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        GuardedHTTPHandler(policy),
        GuardedHTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        GuardedRedirectHandler(policy),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
