"""Built-in bias-mitigation methods, each a pluggy plugin (see dermbench.hookspecs)."""
