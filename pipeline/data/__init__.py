"""Shards: writing, reading, declared sample fields, decoding, built-in datasets with oracles."""
from pipeline.data.stream import *  # noqa: F401,F403
from pipeline.data.fields import DEFAULT_FIELDS, Field, FieldError, Image, Label, Text  # noqa: F401
from pipeline.data.shards import (DataError, count_samples, load_manifest, read_samples,  # noqa: F401
                                  resolve_shards, shard_keys, write_shards)
