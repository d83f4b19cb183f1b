"""vtsel's tests: a regular package, so `tests.*` helpers win over any installed `tests`."""
