"""The files smpack itself writes into a package, named once for every module that writes,
reads, lists or skips them."""

ASSETS_EXTRA = "assets.extra"
# In assets.extra/: TF Serving's warmup requests, and the files that describe the whole
# package (an extracted single graph must not carry them).
WARMUP_FILE = "tf_serving_warmup_requests"
# The manifest's examples, as the same PredictionLog records (see smpack/builder/warmup.py).
EXAMPLES_FILE = "smpack_examples"
PROVENANCE_FILE = "smpack.json"
# What was measured on the build host per variant (see smpack/checks/measure.py), and the
# sha256 of the cards, which show those numbers. Timings differ run to run, so two measured
# builds of one manifest differ in this file and the cards, and nowhere else: smpack.json,
# the graphs, the weights and the serving configs hold no measured number.
MEASURED_FILE = "smpack_measured.json"
# model_card.json is the Model Card Toolkit's JSON form of the card.
CARD_FILES = ("model_card.md", "model_card.html", "model_card.json")
MEASURED_FILES = (MEASURED_FILE, *CARD_FILES)
PACKAGE_DESCRIPTIONS = (PROVENANCE_FILE, *MEASURED_FILES)
RECORD_PATH = f"{ASSETS_EXTRA}/{PROVENANCE_FILE}"
MEASURED_PATH = f"{ASSETS_EXTRA}/{MEASURED_FILE}"
# In assets.extra/: the Triton and TF Serving configs of every serving variant, one folder
# per target (see smpack/package/serving_config.py).
SERVING_FOLDER = "serving"
# A train graph's collection holding one sentence: what the graph trains (which function of
# the source, which variables frozen), for inspect, the card and smpack.json.
TRAIN_FUNCTION_COLLECTION = "smpack_train_function"
# At the package's top level, as TF 2.x writes it.
FINGERPRINT_FILE = "fingerprint.pb"
