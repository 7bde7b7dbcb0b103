"""Where a model comes from: a Python model function, a TF2 SavedModel or a Keras file, each
turned into a model function every variant is built from (`model_source.open_source`)."""
