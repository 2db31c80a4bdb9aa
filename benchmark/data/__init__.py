"""Data: the sample-table model, dataset plugin base classes, image decoding and caching,
split files, sensitive-attribute groups and the Fitzpatrick17k fetcher.

Owns everything between files on disk and a `Split` in memory. Imports plugin discovery
(`dermbench.plugins`, to build datasets by name), the bottom layer (`errors`, `files`, `seeds`)
and third-party libraries; nothing above it.
"""

from dermbench.data.model import Dataset, Split, TestSet

__all__ = ["Dataset", "Split", "TestSet"]
