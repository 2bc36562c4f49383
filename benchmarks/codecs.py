"""Bytes, speed and error of every update codec (fogfl/codecs), with and without zstd.

Two models:
- the ECG5000 task's model (10,085 values), with a real client update: one client's local
  training from the initial model on ../shared/data/ecg5000 (Gaussian deltas of the same
  shapes without the data). Bytes are given as the codec's tensor bytes and as the whole
  message (the update's envelope metadata included), each against float32;
- a model of `--megabytes` of float32 in 18 tensors with Gaussian deltas (σ 1e-2 of
  weights σ 1), for encode and decode speed in MB/s of float32 input (best of `--repeats`;
  the update path: a delta from the reference, no error feedback; the reference's digest,
  computed once a round, is not timed).

Relative error is ‖decoded delta − delta‖ / ‖delta‖.

With `--accuracy`, also the federation of configs/ecg5000.yaml (2 regions × 3 clients,
Dirichlet 0.5) simulated with each update codec (`fogfl sim`'s own code, error feedback on)
for `--rounds` rounds and `--seeds` seeds: the final accuracy against float32's over the
same rounds, and the clients' uplink bytes per round.

    python benchmarks/codecs.py                      # ECG5000 + 100 MB
    python benchmarks/codecs.py --megabytes 10 --repeats 3
    python benchmarks/codecs.py --accuracy --rounds 5 20 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors.numpy import save as safetensors_save

from fogfl.codecs import CODECS, Reference, decode_model, encode_model
from fogfl.config import TrainingSettings
from fogfl.wire import Envelope, ModelSchema, encode, read_metadata

Model = dict[str, np.ndarray]
DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "ecg5000"
T = TypeVar("T")


def best_of(repeats: int, action: Callable[[], T]) -> tuple[float, T]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    assert result is not None
    return min(times), result


def ecg5000_update() -> tuple[Model, Model, str]:
    """(initial model, one client's update, where the update came from)."""
    from fogfl.tasks import load_task
    from fogfl.tasks.base import load_tensors, model_tensors

    if DATA_DIR.is_dir():
        task = load_task("ecg5000", {"data_dir": str(DATA_DIR), "partition": "dirichlet"})
        network = task.build_model(0)
        initial = {k: v.copy() for k, v in model_tensors(network).items()}
        settings = TrainingSettings(local_epochs=2, batch_size=32, learning_rate=0.005)
        task.train(network, task.load_partition("north-01", 0), settings, 1)
        update = {k: v.copy() for k, v in model_tensors(network).items()}
        load_tensors(network, initial)
        return initial, update, "north-01's first local round on ../shared/data/ecg5000"
    initial = model_tensors(load_task("ecg5000").build_model(0))
    return initial, gaussian_update(initial, 0.01), "Gaussian deltas (no ECG5000 data found)"


def synthetic_model(megabytes: float, tensors: int = 18) -> Model:
    rng = np.random.default_rng(0)
    per_tensor = int(megabytes * 1e6 / 4 / tensors)
    return {
        f"layer{i}.weight": rng.standard_normal(per_tensor, dtype=np.float32)
        for i in range(tensors)
    }


def gaussian_update(model: Model, sigma: float) -> Model:
    rng = np.random.default_rng(1)
    return {
        k: v + np.float32(sigma) * rng.standard_normal(v.shape, dtype=np.float32)
        for k, v in model.items()
    }


def relative_error(decoded: Model, update: Model, reference: Model) -> float:
    num = sum(float(np.sum((decoded[k].astype(np.float64) - update[k]) ** 2)) for k in update)
    den = sum(float(np.sum((update[k].astype(np.float64) - reference[k]) ** 2)) for k in update)
    return math.sqrt(num / den)


def message_bytes(tensors: dict[str, Any], codec_metadata: dict[str, str], update: Model) -> int:
    """The whole payload: the codec's tensors under an update's envelope metadata."""
    envelope = read_metadata(
        encode(
            Envelope(
                "update",
                "run-2026-12-01-ab12",
                12,
                "north-01",
                "north",
                560,
                tensors=update,
                metrics={"train_loss": 0.31, "train_seconds": 1.2, "eval_loss": 0.35},
            )
        )
    )
    return len(safetensors_save(tensors, metadata={**envelope, **codec_metadata}))


def sizes_and_errors() -> None:
    initial, update, source = ecg5000_update()
    schema = ModelSchema.of(initial)
    reference = Reference(initial, schema)
    raw = sum(a.nbytes for a in update.values())
    float32_message = message_bytes(update, {"codec": "float32"}, update)
    print(f"ECG5000 model: {schema.num_values:,} values, {raw:,} bytes float32; update: {source}")
    print(
        f"{'codec':>9} {'zstd':>5} {'tensor bytes':>13} {'vs f32':>7} {'message':>8} "
        f"{'vs f32':>7} {'rel. error':>10}"
    )
    for codec in CODECS:
        for compression in ("none", "zstd"):
            encoded = encode_model(
                update, schema, codec, compression=compression, reference=reference
            )
            decoded = decode_model(encoded.tensors, encoded.metadata, schema, reference=reference)
            message = message_bytes(encoded.tensors, encoded.metadata, update)
            print(
                f"{codec:>9} {compression:>5} {encoded.nbytes:>13,} {encoded.nbytes / raw:>7.1%} "
                f"{message:>8,} {message / float32_message:>7.1%} "
                f"{relative_error(decoded, update, initial):>10.2e}"
            )


def speeds(megabytes: float, repeats: int) -> None:
    model = synthetic_model(megabytes)
    update = gaussian_update(model, 0.01)
    schema = ModelSchema.of(model)
    reference = Reference(model, schema)
    _ = reference.digest, reference.absmax  # once a round, not per message
    raw = sum(a.nbytes for a in model.values())
    mb = raw / 1e6
    print(f"\n{mb:.0f} MB model (18 tensors), best of {repeats}; MB/s of float32 input")
    print(
        f"{'codec':>9} {'zstd':>5} {'bytes vs f32':>12} {'encode MB/s':>11} {'decode MB/s':>11} "
        f"{'enc+dec MB/s':>12} {'rel. error':>10}"
    )
    for codec in CODECS:
        for compression in ("none", "zstd"):
            encode_s, encoded = best_of(
                repeats,
                lambda codec=codec, compression=compression: encode_model(
                    update, schema, codec, compression=compression, reference=reference
                ),
            )
            decode_s, decoded = best_of(
                repeats,
                lambda encoded=encoded: decode_model(
                    encoded.tensors, encoded.metadata, schema, reference=reference
                ),
            )
            print(
                f"{codec:>9} {compression:>5} {encoded.nbytes / raw:>12.1%} "
                f"{mb / encode_s:>11,.0f} {mb / decode_s:>11,.0f} "
                f"{mb / (encode_s + decode_s):>12,.0f} "
                f"{relative_error(decoded, update, model):>10.2e}"
            )


def federation_accuracy(rounds: list[int], seeds: list[int], codecs: list[str]) -> None:
    """Each seed and codec runs once, for the most rounds asked; the accuracy after fewer
    rounds is the clients' evaluation of that round's global model, the same model and
    test split a shorter run's final evaluation sees."""
    from fogfl.config import load_config
    from fogfl.sim.hierarchy import simulate
    from fogfl.sim.workers import ClientPool

    config_file = Path(__file__).parents[1] / "configs" / "ecg5000.yaml"
    print(f"\nECG5000 federation ({config_file.name}), final accuracy by update codec")
    print(
        f"{'rounds':>6} {'seed':>4} {'codec':>9} {'accuracy':>8} {'vs f32 (pp)':>11} "
        f"{'uplink B/round':>14} {'vs f32':>7}"
    )
    horizons = sorted(set(rounds))
    gaps: dict[tuple[str, int], list[float]] = {}
    with ClientPool(2) as pool:
        for seed in seeds:
            curves: dict[str, tuple[list[float], float]] = {}
            for variant in ["float32", *codecs]:
                codec, _, without = variant.partition("-")
                config = load_config(
                    config_file,
                    {
                        "task.options.data_dir": str(DATA_DIR),
                        "federation.rounds": horizons[-1],
                        "federation.seed": seed,
                        "wire.update_codec": codec,
                        "wire.error_feedback": without != "noef",
                    },
                    environ={},
                )
                run = simulate(config, pool)
                accuracy = [float(r.eval_accuracy or 0.0) for r in run.records]
                uplink = float(np.mean([_update_bytes(r) for r in run.records[1:]]))
                curves[variant] = (accuracy, uplink)
            base_accuracy, base_uplink = curves["float32"]
            for length in horizons:
                for variant, (accuracy, uplink) in curves.items():
                    gap = 100 * (accuracy[length] - base_accuracy[length])
                    gaps.setdefault((variant, length), []).append(gap)
                    print(
                        f"{length:>6} {seed:>4} {variant:>9} {accuracy[length]:>8.4f} "
                        f"{gap:>+11.2f} {uplink:>14,.0f} {uplink / base_uplink:>7.1%}"
                    )
    print("\nmean accuracy vs float32 (pp) over the seeds")
    print(f"{'codec':>9} " + " ".join(f"{f'{length} rounds':>10}" for length in horizons))
    for variant in codecs:
        means = [float(np.mean(gaps[variant, length])) for length in horizons]
        print(f"{variant:>9} " + " ".join(f"{mean:>+10.2f}" for mean in means))


def _update_bytes(record: Any) -> float:
    """The clients' update bytes of a round (κ = 1): bytes_up less the partials'."""
    global_bytes = record.bytes_down / record.clients
    partials = record.bytes_cloud - global_bytes * record.regions
    return float(record.bytes_up - partials)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=100, help="speed model size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="simulate the federation too")
    parser.add_argument("--rounds", type=int, nargs="*", default=[5])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument(
        "--codecs", nargs="*", default=["int8", "topk"], help="topk-noef: without error feedback"
    )
    parser.add_argument("--only-accuracy", action="store_true", help="skip sizes and speeds")
    args = parser.parse_args()
    if not args.only_accuracy:
        sizes_and_errors()
        speeds(args.megabytes, args.repeats)
    if args.accuracy or args.only_accuracy:
        federation_accuracy(args.rounds, args.seeds, args.codecs)


if __name__ == "__main__":
    main()
