from mesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Token(_message.Message):
    __slots__ = ("id", "expires_at", "max_uses", "uses", "revoked", "labels", "created_at", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    expires_at: int
    max_uses: int
    uses: int
    revoked: bool
    labels: _containers.ScalarMap[str, str]
    created_at: int
    description: str
    def __init__(self, id: _Optional[str] = ..., expires_at: _Optional[int] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., revoked: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("ttl_s", "max_uses", "labels", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ttl_s: int
    max_uses: int
    labels: _containers.ScalarMap[str, str]
    description: str
    def __init__(self, ttl_s: _Optional[int] = ..., max_uses: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("token", "node", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    node: _types_pb2.Node
    csr_pem: str
    def __init__(self, token: _Optional[str] = ..., node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node", "certificate_pem", "ca_pem", "lease_ttl_s", "gossip", "observed_address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.Node
    certificate_pem: str
    ca_pem: str
    lease_ttl_s: int
    gossip: GossipConfig
    observed_address: str
    def __init__(self, node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., lease_ttl_s: _Optional[int] = ..., gossip: _Optional[_Union[GossipConfig, _Mapping]] = ..., observed_address: _Optional[str] = ...) -> None: ...

class GossipConfig(_message.Message):
    __slots__ = ("keys", "catalog_public_key", "catalog_keys")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CATALOG_KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    catalog_public_key: bytes
    catalog_keys: _containers.RepeatedCompositeFieldContainer[CatalogKey]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., catalog_public_key: _Optional[bytes] = ..., catalog_keys: _Optional[_Iterable[_Union[CatalogKey, _Mapping]]] = ...) -> None: ...

class CatalogKey(_message.Message):
    __slots__ = ("id", "public_key", "signs_from", "retires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNS_FROM_FIELD_NUMBER: _ClassVar[int]
    RETIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    public_key: bytes
    signs_from: int
    retires_at: int
    def __init__(self, id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., signs_from: _Optional[int] = ..., retires_at: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("node", "csr_pem")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.Node
    csr_pem: str
    def __init__(self, node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("node", "lease_ttl_s", "gossip", "observed_address", "certificate_pem", "records")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.Node
    lease_ttl_s: int
    gossip: GossipConfig
    observed_address: str
    certificate_pem: str
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, node: _Optional[_Union[_types_pb2.Node, _Mapping]] = ..., lease_ttl_s: _Optional[int] = ..., gossip: _Optional[_Union[GossipConfig, _Mapping]] = ..., observed_address: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RotateGossipKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateGossipKeyResponse(_message.Message):
    __slots__ = ("key_id", "stage")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    stage: str
    def __init__(self, key_id: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IssueAdminCertRequest(_message.Message):
    __slots__ = ("csr_pem", "ttl_s", "may_issue")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    MAY_ISSUE_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    ttl_s: int
    may_issue: bool
    def __init__(self, csr_pem: _Optional[str] = ..., ttl_s: _Optional[int] = ..., may_issue: _Optional[bool] = ...) -> None: ...

class IssueAdminCertResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "serial", "expires_at")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    ca_pem: str
    serial: str
    expires_at: int
    def __init__(self, certificate_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., serial: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class AdminCert(_message.Message):
    __slots__ = ("serial", "name", "expires_at", "may_issue", "revoked", "issued_at")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAY_ISSUE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    serial: str
    name: str
    expires_at: int
    may_issue: bool
    revoked: bool
    issued_at: int
    def __init__(self, serial: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[int] = ..., may_issue: _Optional[bool] = ..., revoked: _Optional[bool] = ..., issued_at: _Optional[int] = ...) -> None: ...

class ListAdminCertsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdminCertsResponse(_message.Message):
    __slots__ = ("certs",)
    CERTS_FIELD_NUMBER: _ClassVar[int]
    certs: _containers.RepeatedCompositeFieldContainer[AdminCert]
    def __init__(self, certs: _Optional[_Iterable[_Union[AdminCert, _Mapping]]] = ...) -> None: ...

class RevokeAdminCertRequest(_message.Message):
    __slots__ = ("serial_or_name",)
    SERIAL_OR_NAME_FIELD_NUMBER: _ClassVar[int]
    serial_or_name: str
    def __init__(self, serial_or_name: _Optional[str] = ...) -> None: ...

class RevokeAdminCertResponse(_message.Message):
    __slots__ = ("certs",)
    CERTS_FIELD_NUMBER: _ClassVar[int]
    certs: _containers.RepeatedCompositeFieldContainer[AdminCert]
    def __init__(self, certs: _Optional[_Iterable[_Union[AdminCert, _Mapping]]] = ...) -> None: ...

class K3sJoinRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class K3sJoinResponse(_message.Message):
    __slots__ = ("server_url", "token")
    SERVER_URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    server_url: str
    token: str
    def __init__(self, server_url: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...
