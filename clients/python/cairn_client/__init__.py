"""A Python client for cairn (see clients/python/README.md)."""

from .client import (
    ERROR_CODE_TRAILER,
    LEADER_ID_TRAILER,
    AttemptFailure,
    CairnError,
    Client,
    tls_credentials,
)
from .gen.cairn.kv.v1 import kv_pb2

__all__ = ["Client", "CairnError", "AttemptFailure", "ERROR_CODE_TRAILER", "LEADER_ID_TRAILER", "kv_pb2", "tls_credentials"]
