#!/bin/sh
exec tensorflow_model_server --model_config_file=/models/linear/1/assets.extra/serving/tfserving/tpu/models.config --saved_model_tags=serve,tpu --enable_batching=true --batching_parameters_file=/models/linear/1/assets.extra/serving/tfserving/tpu/batching_parameters.txt
