"""zojax.optim: ZOGrad, the transforms, the fused step, the adapter state, scaled and orthogonal updates."""
