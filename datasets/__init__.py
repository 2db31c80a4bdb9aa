"""Built-in datasets, each a `dermbench.data.Dataset` subclass registered by name."""
