"""Django-free checks of a client's SDP offer, run before the server spends anything on it.

Two jobs, both on the offer text before aiortc sees it:

- :func:`candidates_filter` rewrites the ``a=candidate`` lines: it keeps at most
  ``limit`` candidates and drops every address a client could not have (multicast,
  broadcast, unspecified, reserved, malformed, DNS names other than mDNS ``.local``,
  and the configured deny ranges). aioice sends STUN checks to every remote
  candidate, so an offer full of foreign addresses would make the server a UDP
  reflector. Loopback stays allowed (tests and loopback deployments use it).
- :func:`offer_check` parses the offer with aiortc's own parser and requires what a
  working peer connection needs (an audio section in the right direction, Opus,
  ICE credentials, a DTLS fingerprint, RTCP mux), so an offer that would fail inside
  aiortc fails here, before a session row, a recording or a denoiser exists.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiortc.sdp import SessionDescription

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Role = Literal["broadcast", "listen"]

_CANDIDATE_PREFIX = "a=candidate:"
_MDNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.local")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class OfferError(ValueError):
    """An SDP offer the server will not use; str() is safe to show the client."""


@dataclass
class CandidateFilterResult:
    """The rewritten offer and what was taken out of it."""

    sdp: str
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def dropped_total(self) -> int:
        """How many ``a=candidate`` lines were removed."""
        return sum(self.dropped.values())


def deny_networks_parse(networks: Iterable[str]) -> list[IPNetwork]:
    """``ip_network`` of every entry (host bits allowed); ValueError on a bad one."""
    return [ipaddress.ip_network(entry, strict=False) for entry in networks]


def candidate_address_refusal(address: str, deny: Sequence[IPNetwork] = ()) -> str | None:
    """Why a remote candidate's connection address is refused, or None if allowed.

    Allowed: unicast IP addresses (loopback included) outside ``deny``, and mDNS
    ``.local`` host names (browsers hide LAN addresses behind them).
    """
    if address.lower().endswith(".local"):
        return None if len(address) <= 255 and _MDNS_NAME.fullmatch(address) else "bad_name"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not_ip"  # a DNS name: the server would resolve whatever a client names
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip == _LIMITED_BROADCAST:
        return "broadcast"
    if ip.is_reserved and not ip.is_loopback:
        return "reserved"
    if any(ip.version == net.version and ip in net for net in deny):
        return "denied"
    return None


def _candidate_refusal(value: str, deny: Sequence[IPNetwork]) -> str | None:
    """Why the ``a=candidate:`` value (RFC 8839 §5.1) is refused, or None."""
    fields = value.split()
    if len(fields) < 8 or fields[6] != "typ":
        return "malformed"
    try:
        port = int(fields[5])
    except ValueError:
        return "malformed"
    if not 0 < port < 65536:
        return "bad_port"
    return candidate_address_refusal(fields[4], deny)


def candidates_filter(
    sdp: str, *, limit: int, deny: Sequence[IPNetwork] = ()
) -> CandidateFilterResult:
    """Keep at most ``limit`` acceptable ``a=candidate`` lines of ``sdp`` (in offer order).

    Every other line is kept byte for byte (line endings included). The count is per
    offer, over all media sections.
    """
    result = CandidateFilterResult(sdp=sdp)
    lines = sdp.split("\n")
    out: list[str] = []
    for line in lines:
        if not line.startswith(_CANDIDATE_PREFIX):
            out.append(line)
            continue
        reason = _candidate_refusal(line[len(_CANDIDATE_PREFIX) :].rstrip("\r"), deny)
        if reason is None and result.kept >= limit:
            reason = "over_limit"
        if reason is None:
            result.kept += 1
            out.append(line)
        else:
            result.dropped[reason] += 1
    if result.dropped:
        result.sdp = "\n".join(out)
    return result


def offer_check(sdp: str, *, role: Role) -> None:
    """Require what aiortc needs to answer ``sdp`` as a ``role`` offer.

    ``broadcast``: an audio section the client sends (sendrecv/sendonly); ``listen``:
    one it receives (sendrecv/recvonly). That section must offer Opus, and every
    section needs ICE ufrag and pwd, a DTLS fingerprint and (audio/video) RTCP mux.

    Raises:
        OfferError: the first requirement the offer misses.
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises ValueError/KeyError/IndexError/...
        raise OfferError("The SDP offer could not be parsed.") from exc
    audio = [m for m in description.media if m.kind == "audio"]
    if not audio:
        raise OfferError("The SDP offer has no audio track.")
    wanted = {"sendrecv", "sendonly"} if role == "broadcast" else {"sendrecv", "recvonly"}
    usable = [m for m in audio if (m.direction or "sendrecv") in wanted]
    if not usable:
        if role == "broadcast":
            raise OfferError("The SDP offer sends no audio (is the microphone track added?).")
        raise OfferError("The SDP offer receives no audio.")
    if not any(codec.mimeType.lower() == "audio/opus" for codec in usable[0].rtp.codecs):
        raise OfferError("The SDP offer's audio has no Opus codec.")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError("The SDP offer has no ICE username fragment or password.")
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError("The SDP offer has no DTLS fingerprint.")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise OfferError("The SDP offer does not multiplex RTCP (a=rtcp-mux).")
