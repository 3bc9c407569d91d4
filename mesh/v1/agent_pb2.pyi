from mesh.v1 import types_pb2 as _types_pb2
from mesh.v1 import catalog_pb2 as _catalog_pb2
from mesh.v1 import nodes_pb2 as _nodes_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[_types_pb2.Service]
    def __init__(self, services: _Optional[_Iterable[_Union[_types_pb2.Service, _Mapping]]] = ...) -> None: ...

class AgentStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatusResponse(_message.Message):
    __slots__ = ("node", "coordinator", "connected", "catalog_revision", "services", "nodes", "dns_address", "last_contact", "counters", "facts", "fact_sources", "health")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FactSourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_REVISION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DNS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    FACT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.Node
    coordinator: str
    connected: bool
    catalog_revision: int
    services: int
    nodes: int
    dns_address: str
    last_contact: int
    counters: _containers.ScalarMap[str, int]
    facts: _containers.ScalarMap[str, str]
    fact_sources: _containers.ScalarMap[str, str]
    health: str
    def __init__(self, node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., coordinator: _Optional[str] = ..., connected: _Optional[bool] = ..., catalog_revision: _Optional[int] = ..., services: _Optional[int] = ..., nodes: _Optional[int] = ..., dns_address: _Optional[str] = ..., last_contact: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ..., facts: _Optional[_Mapping[str, str]] = ..., fact_sources: _Optional[_Mapping[str, str]] = ..., health: _Optional[str] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "name", "mesh_address", "path", "reason", "via", "endpoint", "latest_handshake", "rx_bytes", "tx_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    LATEST_HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    mesh_address: str
    path: str
    reason: str
    via: str
    endpoint: str
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., mesh_address: _Optional[str] = ..., path: _Optional[str] = ..., reason: _Optional[str] = ..., via: _Optional[str] = ..., endpoint: _Optional[str] = ..., latest_handshake: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_bytes: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers", "data_plane")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    data_plane: bool
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., data_plane: _Optional[bool] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("target", "count")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    target: str
    count: int
    def __init__(self, target: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("peer", "rtt_ms", "lost", "probed")
    PEER_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    PROBED_FIELD_NUMBER: _ClassVar[int]
    peer: Peer
    rtt_ms: _containers.RepeatedScalarFieldContainer[float]
    lost: int
    probed: str
    def __init__(self, peer: _Optional[_Union[Peer, _Mapping]] = ..., rtt_ms: _Optional[_Iterable[float]] = ..., lost: _Optional[int] = ..., probed: _Optional[str] = ...) -> None: ...
