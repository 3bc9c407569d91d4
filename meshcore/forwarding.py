"""Which service a forwarded TCP connection may go to: one rule for `meshctl proxy` and meshd.

`meshctl proxy NAME[:PORT]` checks the name once before it listens (through
the agent, or meshd with an admin certificate), and meshd checks it again for
every tunnel it opens, since the service may have changed in between. Both
ask `target(service or None, name, port)`: the address and port to connect
to, or one typed error naming the rule.
"""

from __future__ import annotations

from mesh.v1 import types_pb2
from meshcore.errors import FailedPrecondition, InvalidArgument, NotFound


def target(svc: types_pb2.Service | None, name: str, port: int | None) -> tuple[str, int]:
    """(address, port) of a healthy TCP service; `port` None or 0 means the service's own."""
    if svc is None:
        raise NotFound(f"no service named {name!r} in the mesh (meshctl services lists them)")
    kind = svc.health.WhichOneof("kind")
    if kind and svc.health_state != types_pb2.HEALTH_STATE_PASSING:
        raise FailedPrecondition(f"service {name!r} on node {svc.node_name} is not healthy (its "
                                 f"{kind.replace('_', ' ')} check fails): nothing to forward to")
    if svc.protocol == types_pb2.PROTOCOL_UDP:
        raise InvalidArgument(f"service {name!r} is UDP: meshctl proxy forwards TCP")
    if not svc.address:
        raise FailedPrecondition(f"service {name!r} has no address yet")
    return svc.address, port or svc.port
