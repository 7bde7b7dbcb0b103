"""Where packages are written and read: local staging and publishing, URLs via tf.io.gfile,
and importing TensorFlow without its start-up chatter."""
