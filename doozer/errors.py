"""Error codes of the wire protocol, shared by the node, the client and the CLI.

Inside the pure core a failed operation is a value (an error code and a detail);
at the edges it becomes a response line or a typed exception.
"""

from __future__ import annotations

BAD_REQUEST = "BAD_REQUEST"
TOO_LARGE = "TOO_LARGE"
UNKNOWN_VERB = "UNKNOWN_VERB"
MISSING_ARG = "MISSING_ARG"
TAG_IN_USE = "TAG_IN_USE"
BAD_PATH = "BAD_PATH"
REV_MISMATCH = "REV_MISMATCH"
TOO_LATE = "TOO_LATE"
RANGE = "RANGE"
NOTDIR = "NOTDIR"
ISDIR = "ISDIR"
NOENT = "NOENT"
PERMISSION = "PERMISSION"
UNAVAILABLE = "UNAVAILABLE"
TIMEOUT = "TIMEOUT"
CANCELLED = "CANCELLED"
READONLY = "READONLY"
OTHER = "OTHER"

ALL_CODES = (
    BAD_REQUEST,
    TOO_LARGE,
    UNKNOWN_VERB,
    MISSING_ARG,
    TAG_IN_USE,
    BAD_PATH,
    REV_MISMATCH,
    TOO_LATE,
    RANGE,
    NOTDIR,
    ISDIR,
    NOENT,
    PERMISSION,
    UNAVAILABLE,
    TIMEOUT,
    CANCELLED,
    READONLY,
    OTHER,
)


# How a node shutting down begins the detail of what it fails (a read may be
# sent to another node), and what it answers to a request it did not carry
# out (any node may be sent it instead, a write included).
SHUTTING_DOWN = "the node is shutting down"
NOT_CARRIED_OUT = SHUTTING_DOWN + "; the request was not carried out"


class DoozerError(Exception):
    """An error with a protocol error code. Raised by the client library, and by
    store reads (the node turns it into an error response)."""

    code: str = OTHER

    def __init__(self, code: str | None = None, detail: str = "") -> None:
        if code is not None:
            self.code = code
        self.detail = detail
        super().__init__(f"{self.code}: {detail}" if detail else self.code)


def _make(name: str, code: str) -> type[DoozerError]:
    return type(name, (DoozerError,), {"code": code, "__doc__": f"err_code {code}"})


BadRequest = _make("BadRequest", BAD_REQUEST)
TooLarge = _make("TooLarge", TOO_LARGE)
UnknownVerb = _make("UnknownVerb", UNKNOWN_VERB)
MissingArg = _make("MissingArg", MISSING_ARG)
TagInUse = _make("TagInUse", TAG_IN_USE)
BadPath = _make("BadPath", BAD_PATH)
RevMismatch = _make("RevMismatch", REV_MISMATCH)
TooLate = _make("TooLate", TOO_LATE)
RangeError_ = _make("RangeError", RANGE)
NotDir = _make("NotDir", NOTDIR)
IsDir = _make("IsDir", ISDIR)
NoEnt = _make("NoEnt", NOENT)
Permission = _make("Permission", PERMISSION)
Unavailable = _make("Unavailable", UNAVAILABLE)
Timeout = _make("Timeout", TIMEOUT)
Cancelled = _make("Cancelled", CANCELLED)
ReadOnly = _make("ReadOnly", READONLY)
Other = _make("Other", OTHER)

BY_CODE: dict[str, type[DoozerError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        TooLarge,
        UnknownVerb,
        MissingArg,
        TagInUse,
        BadPath,
        RevMismatch,
        TooLate,
        RangeError_,
        NotDir,
        IsDir,
        NoEnt,
        Permission,
        Unavailable,
        Timeout,
        Cancelled,
        ReadOnly,
        Other,
    )
}


def error_for(code: str, detail: str = "") -> DoozerError:
    """The typed exception for an err_code (unknown codes map to DoozerError)."""
    cls = BY_CODE.get(code)
    if cls is None:
        return DoozerError(code, detail)
    return cls(None, detail)
