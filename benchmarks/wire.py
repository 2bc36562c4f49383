"""Encode/decode time and size of fogfl's envelope against a JSON-float-list envelope (what
the seed prototype sent), for models of 1, 10 and 100 MB of float32 in 18 tensors; and the
time to publish a large payload through Mosquitto with fogfl's zero-copy client and with
plain paho.

    python benchmarks/wire.py                 # 1, 10, 100 MB (the 100 MB JSON run takes ~30 s)
    python benchmarks/wire.py --sizes 1 10    # quicker
    python benchmarks/wire.py --publish 200   # also time a 200 MB publish through Mosquitto
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from fogfl.wire import Envelope, ModelSchema, decode, encode


def model(megabytes: float, tensors: int = 18) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    per_tensor = int(megabytes * 1e6 / 4 / tensors)
    return {
        f"layer{i}.weight": rng.normal(size=per_tensor).astype(np.float32) for i in range(tensors)
    }


def best_of(repeats: int, action):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return min(times), result


def json_envelope(tensors: dict[str, np.ndarray]) -> bytes:
    message = {
        "kind": "update",
        "round": 1,
        "num_examples": 1000,
        "weights": {name: array.tolist() for name, array in tensors.items()},
    }
    return json.dumps(message).encode()


def json_decode(payload: bytes) -> dict[str, np.ndarray]:
    message = json.loads(payload)
    return {
        name: np.asarray(values, dtype=np.float32) for name, values in message["weights"].items()
    }


def measure_one(megabytes: float) -> dict[str, tuple[int, float, float]]:
    """(bytes, encode s, decode s) per envelope for one model size."""
    tensors = model(megabytes)
    schema = ModelSchema.of(tensors)
    message = Envelope(
        kind="update",
        run_id="bench",
        round=1,
        sender="c1",
        region="r",
        num_examples=1000,
        tensors=tensors,
        metrics={"train_loss": 0.1},
    )
    repeats = 5 if megabytes <= 10 else 2
    rows = {}
    for codec in ("float32", "float16"):
        encode_s, payload = best_of(repeats, lambda codec=codec: encode(message, codec))
        decode_s, _ = best_of(
            repeats, lambda p=payload: decode(p, kinds={"update"}, max_bytes=1 << 31, schema=schema)
        )
        rows[codec] = (len(payload), encode_s, decode_s)
    encode_s, payload = best_of(1, lambda: json_envelope(tensors))
    decode_s, _ = best_of(1, lambda: json_decode(payload))
    rows["json float lists"] = (len(payload), encode_s, decode_s)
    return rows


def measure_codecs(sizes: list[float]) -> None:
    print(f"{'model':>8} {'codec':>16} {'bytes':>13} {'vs raw':>8} {'encode s':>9} {'decode s':>9}")
    for megabytes in sizes:
        raw = sum(a.nbytes for a in model(megabytes).values())
        rows = measure_one(megabytes)
        for codec, (size, enc, dec) in rows.items():
            print(
                f"{megabytes:>6g}MB {codec:>16} {size:>13,} {size / raw:>8.4f} "
                f"{enc:>9.4f} {dec:>9.4f}"
            )
        ours, theirs = rows["float32"], rows["json float lists"]
        print(
            f"{'':>8} fogfl vs JSON: {theirs[0] / ours[0]:.1f}x smaller, "
            f"encode {theirs[1] / ours[1]:.0f}x faster, decode {theirs[2] / ours[2]:.0f}x faster"
        )


def measure_publish(megabytes: float) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from fogfl.broker import start_broker
    from fogfl.config import MqttSettings
    from fogfl.mqtt import MqttSession

    payload = encode(
        Envelope(kind="global", run_id="bench", round=1, sender="s", tensors=model(megabytes))
    )
    with tempfile.TemporaryDirectory() as workdir:
        broker = start_broker("mosquitto", Path(workdir))
        try:
            settings = MqttSettings(host=broker.host, port=broker.port, publish_timeout_s=600)
            receiver = MqttSession(settings, "bench-receiver", logging.getLogger("bench")).connect(
                ["bench/#"]
            )
            fogfl_session = MqttSession(
                settings, "bench-fogfl", logging.getLogger("bench")
            ).connect()
            started = time.perf_counter()
            fogfl_session.publish("bench/fogfl", payload)
            fogfl_publish = time.perf_counter() - started
            assert receiver.receive(timeout=600) is not None
            delivered = time.perf_counter() - started

            plain = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
            plain.connect(broker.host, broker.port)
            plain.loop_start()
            started = time.perf_counter()
            plain.publish("bench/paho", payload, qos=1).wait_for_publish(600)
            paho_publish = time.perf_counter() - started
            assert receiver.receive(timeout=600) is not None
            plain.disconnect()
            plain.loop_stop()
            fogfl_session.close()
            receiver.close()
        finally:
            broker.stop()
    print(f"publish {len(payload):,} bytes at QoS 1 through Mosquitto (until PUBACK):")
    print(
        f"  fogfl session (memoryview packets): {fogfl_publish:.2f} s  "
        f"(delivered to a subscriber after {delivered:.2f} s)"
    )
    print(f"  plain paho-mqtt client:             {paho_publish:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=float, nargs="*", default=[1, 10, 100], help="model sizes in MB"
    )
    parser.add_argument(
        "--publish", type=float, default=0, help="also time publishing a model of this many MB"
    )
    args = parser.parse_args()
    measure_codecs(args.sizes)
    if args.publish:
        measure_publish(args.publish)


if __name__ == "__main__":
    main()
