"""zojax.tasks: templates, data sources and the sampler, batching, objectives, rewards, generation."""
