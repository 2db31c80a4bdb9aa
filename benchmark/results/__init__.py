"""Results: run folders and the typed metrics.json record (the one module that writes and reads
it), the per-run report, and leaderboards with their plots.

Imports evaluation/, data/, config and the bottom layer; never the runner, the trainer or cli/.
"""
