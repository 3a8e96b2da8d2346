"""ICE host-candidate gathering restricted to chosen addresses (aioice; no Django).

Used by the media server (``settings.ICE_HOST_ADDRESSES``), the tests and the
benchmarks' client processes, which never set up Django.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice

_original_get_host_addresses = aioice.ice.get_host_addresses


def ice_host_addresses_apply(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates on ``addresses`` only (empty: all interfaces).

    aioice (``aioice/ice.py: get_host_addresses``) enumerates interface addresses and
    skips loopback; this replaces that lookup process-wide so tests and
    loopback-only deployments get ``127.0.0.1`` candidates and nothing else.
    """
    if addresses:
        fixed = list(addresses)
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [  # type: ignore[assignment]
            a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]
    else:
        aioice.ice.get_host_addresses = _original_get_host_addresses
