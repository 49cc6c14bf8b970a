"""The project around the package: docs, lint, notebooks, benchmark scripts."""
