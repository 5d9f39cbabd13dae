"""commune-sync wire protocol v1: schema, events, messages, signatures. No I/O.

Bytes in, objects out; nothing here opens a file or socket, reads a clock or
starts an event loop. Both the agent (:mod:`client`) and the server
(:mod:`syncd`) import this package; it imports neither. SPEC.md describes the
bytes.
"""

from .batches import BatchBody, SealTo
from .codec import pack, unpack
from .dossier import CHANNELS, STATUS_CODES, STATUSES, validate_dossier, validate_status
from .errors import (
    DecodeError,
    ErrorCode,
    FieldProblem,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SignatureError,
    ValidationError,
)
from .events import (
    DocumentAdded,
    DossierCreated,
    Event,
    FieldsChanged,
    StatusChanged,
    apply_event,
    decode_event,
    derive_dossier_id,
    encode_event,
)
from .messages import (
    MEDIA_TYPE,
    PROTOCOL_VERSION,
    Ack,
    CursorRequest,
    EnrollReply,
    EnrollRequest,
    Envelope,
    ErrorReply,
    Heartbeat,
    Limits,
    Verdict,
)

__all__ = [
    "CHANNELS",
    "MEDIA_TYPE",
    "PROTOCOL_VERSION",
    "STATUSES",
    "STATUS_CODES",
    "Ack",
    "BatchBody",
    "CursorRequest",
    "DecodeError",
    "DocumentAdded",
    "DossierCreated",
    "EnrollReply",
    "EnrollRequest",
    "Envelope",
    "ErrorCode",
    "ErrorReply",
    "Event",
    "FieldProblem",
    "FieldsChanged",
    "Heartbeat",
    "Limits",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SealTo",
    "SignatureError",
    "StatusChanged",
    "ValidationError",
    "Verdict",
    "apply_event",
    "decode_event",
    "derive_dossier_id",
    "encode_event",
    "pack",
    "unpack",
    "validate_dossier",
    "validate_status",
]
