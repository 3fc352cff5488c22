"""Tuning of Polars' memory allocator, applied when the `adpipe` command starts, before Polars is imported.

Polars allocates with jemalloc, configured to give freed memory back to the system after 0.5 s. adpipe frees and
reallocates chunk-sized buffers every few milliseconds, so memory handed back was soon faulted in again, page by
page: in a 10M-event `events load --mode stream`, 0.6 s more system time and 0.55 s more wall time (13.81 → 13.26 s,
5 alternating pairs) than when freed memory is kept 10 s, which costs 10–30 MB of peak RSS. A value the user sets
in `_RJEM_MALLOC_CONF` wins. Importing this after Polars has no effect: jemalloc reads it once, at its start.
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:10000,muzzy_decay_ms:10000")
