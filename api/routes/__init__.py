"""HTTP routes: thin wrappers over `api.services`."""
