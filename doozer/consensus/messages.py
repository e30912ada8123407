"""Message types between replicas. Every message is a dict with "t"; ballots are [round, id].

p  prepare      {b, s}            phase 1 for every instance >= s (also a continuation)
P  promise      {b, d, a, [n]}    d: my contiguous decided instance; a: [[i, ballot|null, v]]
                                  accepted (ballot) or decided (null) above d; n: next page
x  reject       {b}               I have promised / follow a higher ballot
a  accept       {b, i, v, c}      phase 2 for instance i; c: leader's commit
A  accepted     {b, i}
c  commit       {b, c}            every instance <= c is decided
h  heartbeat    {b, r, c}         r: round (read index, check-quorum)
H  heartbeat ok {b, r, d, s, [w]} d: my commit; s: members I have not heard from lately;
                                  w: someone watches my store (news to me is urgent)
v  pre-vote     {r, d}            would you follow me? d: my commit
V  pre-vote ok  {r, ok, d}         d: my commit
g  ping         {}                liveness between members
f  forward      {items, [h]}      proposals for the leader
ri read index   {id}              RI {id, i} answer; RF {id} failed
q  fetch        {s}               send decided instances from s on
e  entries      {s, e, c, l}      decided batches s, s+1, ...; c: sender commit; l: its leader
S  snapshot     {base}            I compacted through base: get a snapshot
tn timeout now  {b}               the leader hands leadership over: elect yourself now
"""

from __future__ import annotations

PREPARE = "p"
PROMISE = "P"
REJECT = "x"
ACCEPT = "a"
ACCEPTED = "A"
COMMIT = "c"
HEARTBEAT = "h"
HEARTBEAT_OK = "H"
PREVOTE = "v"
PREVOTE_OK = "V"
PING = "g"
FORWARD = "f"
READ = "ri"
READ_OK = "RI"
READ_FAIL = "RF"
FETCH = "q"
ENTRIES = "e"
SNAPSHOT = "S"
TIMEOUT_NOW = "tn"
