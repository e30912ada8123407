"""A tiny deterministic state machine standing in for doozer's store.

Items are dicts {"id": ..., "op": ...}:
    set  {k, v}            register k := v
    cas  {k, old, v}       if register k == old (None: absent): k := v; result True/False
    del  {k}               remove register k
    cal  {slot, node, if}  if slot exists and holds `if`: slot := node ("" empties it)
    caladd {slot}          create an empty slot
    caldel {slot}          delete a slot (refused if it would leave no member)
The member set is every non-empty slot value. Items are applied at most once, by id.
"""

from __future__ import annotations

import copy
from typing import Any


class StateMachine:
    def __init__(self) -> None:
        self.regs: dict[str, Any] = {}
        self.slots: dict[str, str] = {}
        self.done: dict[str, tuple[Any, int]] = {}  # id -> (result, instance) of its application
        self._members: frozenset[str] | None = None

    def members(self) -> frozenset[str]:
        if self._members is None:
            self._members = frozenset(v for v in self.slots.values() if v)
        return self._members

    def slot_of(self, node: str) -> str | None:
        for s, v in self.slots.items():
            if v == node:
                return s
        return None

    def empty_slots(self) -> list[str]:
        return sorted(s for s, v in self.slots.items() if not v)

    def apply(self, item: dict, instance: int) -> tuple[bool, Any]:
        """Apply one item; returns (first application?, result)."""
        iid = item["id"]
        if iid in self.done:
            return False, self.done[iid][0]
        op = item["op"]
        res: Any = True
        if op == "set":
            self.regs[item["k"]] = item["v"]
        elif op == "cas":
            if self.regs.get(item["k"]) == item["old"]:
                self.regs[item["k"]] = item["v"]
            else:
                res = False
        elif op == "del":
            self.regs.pop(item["k"], None)
        elif op == "cal":
            s = item["slot"]
            if (
                s in self.slots
                and self.slots[s] == item["if"]
                and (item["node"] or len(self.members() - {self.slots[s]}) > 0)
            ):
                self.slots[s] = item["node"]
                self._members = None
            else:
                res = False
        elif op == "caladd":
            if item["slot"] not in self.slots:
                self.slots[item["slot"]] = ""
            else:
                res = False
        elif op == "caldel":
            s = item["slot"]
            if s in self.slots and len(self.members() - {self.slots[s]}) > 0:
                del self.slots[s]
                self._members = None
            else:
                res = False
        else:
            res = False
        self.done[iid] = (res, instance)
        return True, res

    def copy(self) -> StateMachine:
        sm = StateMachine()
        sm.regs = copy.deepcopy(self.regs)
        sm.slots = dict(self.slots)
        sm.done = dict(self.done)
        return sm

    def state(self) -> tuple:
        return (tuple(sorted(self.regs.items())), tuple(sorted(self.slots.items())), len(self.done))
