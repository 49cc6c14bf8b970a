"""The ZO engine: directions and their RNG, scoring, estimators, updates, adapter state, meshes."""
