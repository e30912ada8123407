"""The one thing that changes the store: a mutation, decided in log order.

Mutations travel through consensus and the log, so they have a compact JSON form.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

NOP = 0
SET = 1
DEL = 2

CLOBBER = -1


@dataclass(slots=True)
class Mutation:  # not frozen: frozen dataclasses cost 3x to build, on the write path
    op: int  # NOP, SET or DEL
    path: str = ""
    rev: int = CLOBBER  # condition: -1 unconditional, 0 create-only, n "unchanged since n"
    value: bytes = b""

    def to_wire(self) -> list:
        """Compact JSON-able form: [op, path, rev, value_b64]."""
        if self.op == SET:
            b64 = binascii.b2a_base64(self.value, newline=False).decode()
            return [SET, self.path, self.rev, b64]
        if self.op == DEL:
            return [DEL, self.path, self.rev]
        return [NOP]

    @staticmethod
    def from_wire(w: list) -> Mutation:
        op = w[0]
        if op == SET:
            return Mutation(SET, w[1], w[2], binascii.a2b_base64(w[3]))
        if op == DEL:
            return Mutation(DEL, w[1], w[2])
        return Mutation(NOP)


def nop() -> Mutation:
    return Mutation(NOP)
