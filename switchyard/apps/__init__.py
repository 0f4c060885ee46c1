"""Built-in app manifests (``default.toml`` runs when ``switchyard run`` gets no argument)."""
