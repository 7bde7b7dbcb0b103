"""What real models cost to package: the corpus of architectures people ship, each built into
four variants by smpack, beside one `tf.saved_model.save` of the same model.

A benchmark, not a test. Each model is made with random weights in a fresh process: the
Keras architectures below are saved as `.keras` files; the corpus's other sources (a
StringLookup over a vocabulary file, a tf.Module with a tf.lookup table over an asset, a
tensorflow_text tokenizer, a checkpoint saved with MaxShardSizePolicy) are made by
variants/corpus.py, as the tests make them. Then, each as a fresh process: (1) the
baseline, what TF users do today: loading the model and `tf.saved_model.save` of it (one
variant; a SavedModel source is loaded with `tf.saved_model.load`, with its `source.imports`
imported first); (2) `smpack build --no-verify --no-measure` of serve / train / serve,gpu
(float16 + XLA) / serve,tpu (bfloat16); (3) the same build with its defaults: the card's
measurements, then verification. Times and peak RSS above a bare `import tensorflow` are
reported with the ratios to (1); a model smpack refuses is a row saying why, not a crash.

    .venv/bin/python bench/real.py [--models mobilenet_v2,resnet50,...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml

BIN = Path(sys.executable).parent
CORPUS = Path(__file__).resolve().parent.parent / "variants"

# Each maker writes its source into argv[1] and prints, last, a JSON line: the manifest's
# `source:` block and the number of parameters.
PRELUDE = """\
import json
import sys
import numpy as np
import keras
keras.utils.set_random_seed(0)
out = sys.argv[1]
"""
KERAS_SAVE = """
model.save(f"{out}/model.keras")
source = {"keras": "model.keras", "loss": "sparse_categorical_crossentropy"}
print(json.dumps({"source": source, "params": model.count_params()}))
"""
CORPUS_MAKER = """\
import json
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[3])
import corpus
import tensorflow as tf
source = getattr(corpus, sys.argv[2])(Path(sys.argv[1]))
prefix = Path(sys.argv[1], source["savedmodel"], "variables", "variables")
shapes = [s for key, s in tf.train.list_variables(str(prefix)) if key.endswith("VARIABLE_VALUE")]
print(json.dumps({"source": source, "params": int(sum(np.prod(s) for s in shapes))}))
"""
MODELS = {
    "mobilenet_v2": """
model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                       classes=10, classifier_activation="softmax")
""",
    "resnet50": """
model = keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10)
""",
    "densenet121": """
model = keras.applications.DenseNet121(input_shape=(64, 64, 3), weights=None, classes=10)
""",
    "efficientnet_b0": """
model = keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None, classes=10)
""",
    "text_vectorization": """
vectorize = keras.layers.TextVectorization(max_tokens=200, output_sequence_length=16)
vectorize.adapt(np.array(["the cat sat on the mat", "a dog ate my homework", "hello world"]))
inputs = keras.Input(shape=(), dtype="string")
x = keras.layers.Embedding(200, 16)(vectorize(inputs))
x = keras.layers.GlobalAveragePooling1D()(x)
model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
""",
    "lstm": """
inputs = keras.Input(shape=(20,), dtype="int32")
x = keras.layers.Embedding(500, 32)(inputs)
x = keras.layers.LSTM(32)(x)
model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
""",
    "bert_tiny": """
import keras_hub
backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
                                         hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
model = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2, preprocessor=None,
                                            activation="softmax")
""",
    "gpt2_tiny": """
import keras_hub
model = keras_hub.models.GPT2Backbone(vocabulary_size=100, num_layers=2, num_heads=2,
                                      hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
""",
}
# The corpus's SavedModel sources, by the variants/corpus.py function that makes each.
CORPUS_MODELS = {
    "string_lookup_file": "keras_lookup_over_vocabulary_file",
    "table_over_asset": "module_with_table_over_asset",
    "tensorflow_text": "tensorflow_text_tokenizer",
    "sliced_checkpoint": "sliced_checkpoint_module",
}
SAVE_BASELINE = """\
import sys
import keras
import tensorflow as tf
model = keras.saving.load_model(sys.argv[1])
tf.saved_model.save(model, sys.argv[2])
"""
RESAVE_BASELINE = """\
import importlib
import sys
import tensorflow as tf
for module in sys.argv[3:]:
    importlib.import_module(module)
tf.saved_model.save(tf.saved_model.load(sys.argv[1]), sys.argv[2])
"""
VARIANTS = {
    "cpu": {"tags": ["serve"]},
    "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": 0.01}},
    "gpu": {"tags": ["serve", "gpu"], "device": "/device:GPU:0", "precision": "float16",
            "xla": True},  # fmt: skip
    "tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": 8},
}


class Run(NamedTuple):
    seconds: float
    peak_rss: int  # bytes
    error: str  # the last line of stderr when the process failed, else ""


def measure(command: list[str]) -> Run:
    """Wall time and peak RSS of one fresh process (rusage of that child only)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    failed = os.waitstatus_to_exitcode(status) != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    error = (lines[-1] if lines else "failed") if failed else ""
    return Run(seconds, usage.ru_maxrss * 1024, error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*MODELS, *CORPUS_MODELS]))
    parser.add_argument("--keep", type=Path, help="Keep the models and packages here.")
    args = parser.parse_args()
    # -P: not the working folder first on sys.path (a `smpack/` there would run instead).
    python = [str(BIN / "python"), "-P"]
    with tempfile.TemporaryDirectory(prefix="smpack-real-") as tmp:
        root = args.keep or Path(tmp)
        baseline = measure([*python, "-c", "import tensorflow"])

        def extra(run: Run) -> str:
            return f"{max(0, run.peak_rss - baseline.peak_rss) / 2**20:,.0f} MiB"

        print(f"{'model':20} {'params':>10} {'save':>8} {'build':>8} {'+verify':>8} "
              f"{'build/save':>10} {'RSS save':>10} {'RSS build':>10} {'RSS +verify':>11}")
        for name in args.models.split(","):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            if name in CORPUS_MODELS:
                maker = [CORPUS_MAKER, str(folder), CORPUS_MODELS[name], str(CORPUS)]
            else:
                maker = [PRELUDE + MODELS[name] + KERAS_SAVE, str(folder)]
            made = subprocess.run([*python, "-c", *maker], capture_output=True, text=True)
            if made.returncode != 0:
                print(f"{name:20} could not be made: {made.stderr.strip().splitlines()[-1]}")
                continue
            record = json.loads(made.stdout.splitlines()[-1])
            source, params = record["source"], record["params"]
            manifest = {"schema": 1, "name": name, "version": 1, "source": source}
            manifest["variants"] = VARIANTS
            (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
            if "keras" in source:
                saver = [SAVE_BASELINE, str(folder / source["keras"])]
            else:
                saver = [RESAVE_BASELINE, str(folder / source["savedmodel"])]
            save = measure([*python, "-c", *saver, str(folder / "saved"),
                            *source.get("imports", [])])  # fmt: skip
            build_command = [str(BIN / "smpack"), "build", str(folder / "smpack.yaml"), "-f"]
            unchecked = ["--no-verify", "--no-measure"]  # the packaging alone
            build = measure([*build_command, "-o", str(folder / "out"), *unchecked])
            verified = measure([*build_command, "-o", str(folder / "verified")])
            if build.error or verified.error:
                print(f"{name:20} {params:>10,} {save.seconds:7.1f}s  refused: "
                      f"{build.error or verified.error}")  # fmt: skip
                continue
            print(
                f"{name:20} {params:>10,} {save.seconds:7.1f}s {build.seconds:7.1f}s "
                f"{verified.seconds:7.1f}s {build.seconds / save.seconds:10.2f} "
                f"{extra(save):>10} {extra(build):>10} {extra(verified):>11}"
            )


if __name__ == "__main__":
    main()
