from mesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExposeRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: _types_pb2.Service
    def __init__(self, service: _Optional[_Union[_types_pb2.Service, _Mapping]] = ...) -> None: ...

class ExposeResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: _types_pb2.Service
    def __init__(self, service: _Optional[_Union[_types_pb2.Service, _Mapping]] = ...) -> None: ...

class UnexposeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnexposeResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: _types_pb2.Service
    def __init__(self, service: _Optional[_Union[_types_pb2.Service, _Mapping]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "revision", "sync_errors")
    class SyncErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SYNC_ERRORS_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[_types_pb2.Service]
    revision: int
    sync_errors: _containers.ScalarMap[str, str]
    def __init__(self, services: _Optional[_Iterable[_Union[_types_pb2.Service, _Mapping]]] = ..., revision: _Optional[int] = ..., sync_errors: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ServiceEvent(_message.Message):
    __slots__ = ("type", "service", "revision", "record", "services", "records", "store")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    type: _types_pb2.EventType
    service: _types_pb2.Service
    revision: int
    record: bytes
    services: _containers.RepeatedCompositeFieldContainer[_types_pb2.Service]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    store: str
    def __init__(self, type: _Optional[_Union[_types_pb2.EventType, str]] = ..., service: _Optional[_Union[_types_pb2.Service, _Mapping]] = ..., revision: _Optional[int] = ..., record: _Optional[bytes] = ..., services: _Optional[_Iterable[_Union[_types_pb2.Service, _Mapping]]] = ..., records: _Optional[_Iterable[bytes]] = ..., store: _Optional[str] = ...) -> None: ...

class TunnelData(_message.Message):
    __slots__ = ("service", "port", "data", "node_name", "address")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    data: bytes
    node_name: str
    address: str
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ..., data: _Optional[bytes] = ..., node_name: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...
