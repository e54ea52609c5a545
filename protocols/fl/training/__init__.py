"""Where this node's local FL work runs: process.py (the task process: load, train, evaluate
and export tasks with torch, outside the daemon), prepared.py (a loaded task and its data,
keyed by `TaskKey`) and modelstore.py (global models saved in the data dir)."""
