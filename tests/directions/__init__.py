"""zojax.directions: the direction kinds, their contract and registry, and drawing a tree of directions."""
