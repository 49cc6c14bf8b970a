"""The test suite; its subpackages mirror zojax: engine, models, pipeline, and project (docs, lint, notebooks, bench)."""
