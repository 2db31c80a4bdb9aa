"""Built-in datasets, each a `dermbench.data.model.Dataset` subclass registered by name."""
