"""The overlay's own addresses: a wildcard listen address expanded to the real interface
addresses (`interface_addrs`, what identify advertises), and a plain error when a fixed
listen port is taken (`check_ports_free`, before py-libp2p wraps it in ExceptionGroups)."""
from __future__ import annotations

import ipaddress

import multiaddr
import psutil


def interface_addrs(ma: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """Expand a wildcard listen address (0.0.0.0 / ::) into one per real interface address,
    loopback last; other addresses are returned as they are."""
    protos = [p.name for p in ma.protocols()]
    fam = protos[0] if protos else ""
    if fam not in ("ip4", "ip6"):
        return [ma]
    ip = ma.value_for_protocol(fam)
    if ip not in ("0.0.0.0", "::"):
        return [ma]
    rest = str(ma)[len(f"/{fam}/{ip}"):]
    found: list[tuple[bool, str]] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            host = a.address.split("%", 1)[0]
            try:
                parsed = ipaddress.ip_address(host)
            except ValueError:
                continue
            if (fam == "ip4") != (parsed.version == 4) or parsed.is_link_local:
                continue
            found.append((parsed.is_loopback, f"/{fam}/{host}{rest}"))
    found.sort(key=lambda t: t[0])
    out = [multiaddr.Multiaddr(s) for _, s in dict.fromkeys(found)]
    return out or [ma]


def check_ports_free(listen: list[str]) -> None:
    """Fail early and plainly when a fixed listen port is taken (inside py-libp2p the error
    arrives wrapped in several ExceptionGroups)."""
    import socket
    for text in listen:
        ma = multiaddr.Multiaddr(text)
        protos = [p.name for p in ma.protocols()]
        if protos[0] not in ("ip4", "ip6") or int(ma.value_for_protocol("tcp")) == 0:
            continue
        fam = socket.AF_INET if protos[0] == "ip4" else socket.AF_INET6
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ma.value_for_protocol(protos[0]), int(ma.value_for_protocol("tcp"))))
        except OSError as e:
            raise OSError(e.errno, f"overlay.listen: cannot listen on {text}: {e.strerror}"
                          ) from None
        finally:
            sock.close()
