"""The files smpack itself writes into a package, named once for every module that writes,
reads, lists or skips them."""

ASSETS_EXTRA = "assets.extra"
# In assets.extra/: TF Serving's warmup requests, and the files that describe the whole
# package (an extracted single graph must not carry them).
WARMUP_FILE = "tf_serving_warmup_requests"
# The manifest's examples, as the same PredictionLog records (see smpack/builder/warmup.py).
EXAMPLES_FILE = "smpack_examples"
PROVENANCE_FILE = "smpack.json"
# model_card.json is the Model Card Toolkit's JSON form of the card.
CARD_FILES = ("model_card.md", "model_card.html", "model_card.json")
PACKAGE_DESCRIPTIONS = (PROVENANCE_FILE, *CARD_FILES)
RECORD_PATH = f"{ASSETS_EXTRA}/{PROVENANCE_FILE}"
# In assets.extra/: the Triton and TF Serving configs of every serving variant, one folder
# per target (see smpack/package/serving_config.py).
SERVING_FOLDER = "serving"
# A train graph's collection holding one sentence: what the graph trains (which function of
# the source, which variables frozen), for inspect, the card and smpack.json.
TRAIN_FUNCTION_COLLECTION = "smpack_train_function"
# At the package's top level, as TF 2.x writes it.
FINGERPRINT_FILE = "fingerprint.pb"
