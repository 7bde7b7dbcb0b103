"""What the server that forks verify's graph processes imports once: TensorFlow (quietly,
as the CLI does) and verify's code. Imported only there (`graph_process`)."""

from smpack.io.tf_quietly import import_tensorflow_quietly

import_tensorflow_quietly()

import smpack.checks.verify  # noqa: E402,F401  (after TensorFlow's quiet import)
