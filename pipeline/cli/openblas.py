"""NumPy's OpenBLAS runs on one thread in an `adpipe` process, unless the user set `OPENBLAS_NUM_THREADS`.

adpipe does no linear algebra with NumPy, but OpenBLAS starts a thread per core when NumPy is imported, and its
threads spin while they wait for work: CPU taken from the Postgres reads that run beside the imports
(docs/performance.md). Set before NumPy is imported: OpenBLAS reads it once.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
