"""Codecs: how a model's tensors travel in a message, per tier (numpy only).

`float32` sends the model exactly (FedAvg stays bit-exact); `float16` and `bfloat16` cast
each value; `int8` and `int4` quantize blocks of values against their largest magnitude
(blockwise.py); `topk` sends only the largest-magnitude entries (topk.py). The lossy codecs
send an update as a delta from a `Reference` (the model training started from), and an
`ErrorFeedback` keeps what a client's codec dropped for its next update. Any codec may be
followed by `zstd` (zstd.py). model.py puts them together; docs/protocol.md specifies
every byte.
"""

from fogfl.codecs.model import (
    CODECS,
    COMPRESSIONS,
    DEFAULT_TOPK_FRACTION,
    LOSSY_CODECS,
    CodecHeader,
    Encoded,
    decode_model,
    encode_model,
    wire_layout,
)
from fogfl.codecs.reference import ErrorFeedback, Reference

__all__ = [
    "CODECS",
    "COMPRESSIONS",
    "DEFAULT_TOPK_FRACTION",
    "LOSSY_CODECS",
    "CodecHeader",
    "Encoded",
    "ErrorFeedback",
    "Reference",
    "decode_model",
    "encode_model",
    "wire_layout",
]
