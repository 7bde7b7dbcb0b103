#!/bin/sh
exec tensorflow_model_server --model_config_file=/models/imported/1/assets.extra/serving/tfserving/gpu/models.config --saved_model_tags=serve,gpu
