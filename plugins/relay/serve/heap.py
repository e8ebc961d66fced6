"""A serving process's heap, kept out of the garbage collector's way.

CPython's cyclic collector scans every tracked object of a generation, and a full collection
(the oldest generation) scans them all. A serving replica holds about 300,000 long-lived objects
before its first request (torch, Feast, Ray, pandas, the model and its features), none of which
will ever be garbage; a full collection then took 90-230 ms on this machine (README, fast
serving), and one runs whenever enough objects have survived since the last: under load, every
few seconds, each one a pause of every request in the replica, straight into the P99.

:func:`settle` calls ``gc.freeze()`` once the replica has loaded: what exists then moves to a
permanent generation that collections skip (refcounting still frees those objects as usual),
so a full collection scans only what the requests made since. It is called again after each
load (an inline router loading a new version), which freezes that version's objects too. The
cost: a reference cycle among frozen objects that later becomes garbage is never collected (a
dropped version's cyclic leftovers); versions change a few times a day, the heap they pass
through is bounded.
"""

from __future__ import annotations

import gc


def settle(enabled: bool = True) -> int:
    """Freeze what the process holds now (``RELAY_SERVING__GC_FREEZE``); returns how many
    objects are frozen (0 when off)."""
    if not enabled:
        return 0
    gc.collect()  # garbage from loading goes first, instead of living on frozen
    gc.freeze()
    return gc.get_freeze_count()
