"""Process-level services every stage uses: the process group (distributed.py), counters of
collectives and host syncs (instrumentation.py), weights-only loading (safe_load.py), pre-emption
signals, the output folder's lock, random generators and the process's exit."""
