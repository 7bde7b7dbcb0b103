"""Reading a package without TensorFlow: protobufs, the checkpoint index, inspect, diff and
the model card. Nothing here imports TensorFlow (tests/test_layout.py holds it to that)."""
