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
    __slots__ = ("node", "coordinator", "connected", "catalog_revision", "services", "nodes", "dns_address", "last_contact", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_REVISION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DNS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.Node
    coordinator: str
    connected: bool
    catalog_revision: int
    services: int
    nodes: int
    dns_address: str
    last_contact: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., coordinator: _Optional[str] = ..., connected: _Optional[bool] = ..., catalog_revision: _Optional[int] = ..., services: _Optional[int] = ..., nodes: _Optional[int] = ..., dns_address: _Optional[str] = ..., last_contact: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
