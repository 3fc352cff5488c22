"""Tuning of Polars' memory allocator, applied when the `adpipe` command starts, before Polars is imported.

Polars allocates with jemalloc, configured to give freed memory back to the system after 0.5 s. adpipe frees and
reallocates chunk-sized buffers every few milliseconds, so memory handed back was soon faulted in again, page by
page: in a 10M-event `events load --mode stream`, 0.6 s more system time and 0.55 s more wall time (13.81 → 13.26 s,
5 alternating pairs) than when freed memory is kept 10 s, which costs 10–30 MB of peak RSS.

Polars reads `_RJEM_MALLOC_CONF` as its import (its defaults, then this variable's value: the last value of a key
wins), and writes its defaults into it, so a process started by another Python process that imported Polars
inherits them. Those are dropped; a value the user set is kept after ours, so it still wins. Importing this module
after Polars has no effect: jemalloc reads its configuration once.
"""

import os

VARIABLE = "_RJEM_MALLOC_CONF"
KEEP_FREED_MEMORY = "dirty_decay_ms:10000,muzzy_decay_ms:10000"
POLARS_DEFAULTS = "dirty_decay_ms:500,muzzy_decay_ms:1000"
"""What Polars' `__init__` writes into the variable (Polars 1.x and 2.x)."""

_user = os.environ.get(VARIABLE, "").removeprefix(POLARS_DEFAULTS).lstrip(",")
os.environ[VARIABLE] = ",".join(value for value in (KEEP_FREED_MEMORY, _user) if value)
