"""Checks that load a package with TensorFlow: verify, the TPU computation on XLA:CPU, and
extracting one graph as its own SavedModel."""
