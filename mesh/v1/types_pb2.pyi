from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_UNREACHABLE: _ClassVar[NodeState]
    NODE_STATE_LEFT: _ClassVar[NodeState]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]

class HealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATE_UNSPECIFIED: _ClassVar[HealthState]
    HEALTH_STATE_PASSING: _ClassVar[HealthState]
    HEALTH_STATE_CRITICAL: _ClassVar[HealthState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PUT: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]
    EVENT_TYPE_RESET: _ClassVar[EventType]
    EVENT_TYPE_SYNCED: _ClassVar[EventType]
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_UNREACHABLE: NodeState
NODE_STATE_LEFT: NodeState
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
HEALTH_STATE_UNSPECIFIED: HealthState
HEALTH_STATE_PASSING: HealthState
HEALTH_STATE_CRITICAL: HealthState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PUT: EventType
EVENT_TYPE_DELETE: EventType
EVENT_TYPE_RESET: EventType
EVENT_TYPE_SYNCED: EventType

class Node(_message.Message):
    __slots__ = ("id", "name", "hostname", "cloud", "region", "vpc_id", "private_address", "public_address", "wireguard_public_key", "wireguard_port", "labels", "mesh_address", "state", "joined_at", "last_seen", "drained", "revision", "vpc_cidr", "gossip_port", "metrics_port", "path_report")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    VPC_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PORT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MESH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VPC_CIDR_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_PORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_REPORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    hostname: str
    cloud: str
    region: str
    vpc_id: str
    private_address: str
    public_address: str
    wireguard_public_key: str
    wireguard_port: int
    labels: _containers.ScalarMap[str, str]
    mesh_address: str
    state: NodeState
    joined_at: int
    last_seen: int
    drained: bool
    revision: int
    vpc_cidr: str
    gossip_port: int
    metrics_port: int
    path_report: PathReport
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., cloud: _Optional[str] = ..., region: _Optional[str] = ..., vpc_id: _Optional[str] = ..., private_address: _Optional[str] = ..., public_address: _Optional[str] = ..., wireguard_public_key: _Optional[str] = ..., wireguard_port: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., mesh_address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., joined_at: _Optional[int] = ..., last_seen: _Optional[int] = ..., drained: _Optional[bool] = ..., revision: _Optional[int] = ..., vpc_cidr: _Optional[str] = ..., gossip_port: _Optional[int] = ..., metrics_port: _Optional[int] = ..., path_report: _Optional[_Union[PathReport, _Mapping]] = ...) -> None: ...

class PathReport(_message.Message):
    __slots__ = ("kinds",)
    class Kind(_message.Message):
        __slots__ = ("kind", "down")
        KIND_FIELD_NUMBER: _ClassVar[int]
        DOWN_FIELD_NUMBER: _ClassVar[int]
        kind: str
        down: int
        def __init__(self, kind: _Optional[str] = ..., down: _Optional[int] = ...) -> None: ...
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedCompositeFieldContainer[PathReport.Kind]
    def __init__(self, kinds: _Optional[_Iterable[_Union[PathReport.Kind, _Mapping]]] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("http_path", "tcp", "interval_s")
    HTTP_PATH_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    http_path: str
    tcp: bool
    interval_s: int
    def __init__(self, http_path: _Optional[str] = ..., tcp: _Optional[bool] = ..., interval_s: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "port", "protocol", "health", "node_id", "node_name", "address", "revision", "tags", "health_state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    protocol: Protocol
    health: HealthCheck
    node_id: str
    node_name: str
    address: str
    revision: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    health_state: HealthState
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., health: _Optional[_Union[HealthCheck, _Mapping]] = ..., node_id: _Optional[str] = ..., node_name: _Optional[str] = ..., address: _Optional[str] = ..., revision: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., health_state: _Optional[_Union[HealthState, str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("from_revision", "batch", "store")
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    batch: bool
    store: str
    def __init__(self, from_revision: _Optional[int] = ..., batch: _Optional[bool] = ..., store: _Optional[str] = ...) -> None: ...
