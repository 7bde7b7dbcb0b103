"""Writing a package: one graph per variant, one shared checkpoint, assets, warmup requests,
provenance and cards, published atomically (`packager.build`)."""
