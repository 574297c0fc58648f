"""``federation_ip_range_blacklist`` / ``federation_ip_range_whitelist``: which resolved
addresses outbound federation (requests and ``/.well-known`` fetches) may connect to.

Checked on every address a server name resolves to, before connecting, so a server name
(or a delegation, or a DNS answer) cannot aim us at an internal service.  The whitelist wins
over the blacklist.  An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is judged both as
itself and as the IPv4 address it carries: blocked if either form is blacklisted, allowed
if either form is whitelisted.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(ranges: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(r, strict=False) for r in ranges)


def parse_ip(ip_str: str) -> Address | None:
    """An address from ``1.2.3.4``, ``::1``, ``[::1]`` or ``fe80::1%eth0``; None if not one."""
    if not isinstance(ip_str, str):
        return None
    s = ip_str.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    s = s.split("%", 1)[0]  # a zone id does not change which range an address is in
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


class IpFilter:
    def __init__(self, blacklist: Iterable[str] = (), whitelist: Iterable[str] = ()) -> None:
        self.blacklist = _networks(blacklist)
        self.whitelist = _networks(whitelist)

    @staticmethod
    def _forms(addr: Address) -> list[Address]:
        forms: list[Address] = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            forms.append(addr.ipv4_mapped)
        return forms

    @staticmethod
    def _in(addr: Address, nets: tuple[Network, ...]) -> bool:
        return any(addr.version == n.version and addr in n for n in nets)

    def allowed(self, ip_str: str) -> bool:
        """Whether outbound federation may connect to ``ip_str`` (False if unparsable)."""
        addr = parse_ip(ip_str)
        if addr is None:
            return False
        forms = self._forms(addr)
        if any(self._in(a, self.whitelist) for a in forms):
            return True
        return not any(self._in(a, self.blacklist) for a in forms)
