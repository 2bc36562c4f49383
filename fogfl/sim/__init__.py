"""`fogfl sim`: the hierarchy's rounds in one process, for experiments run hundreds of times.

The simulation keeps every message of the runtime — the global model, each client's update,
region models under edge rounds, each region's partial — as the same encoded fogfl payload,
and runs the same code on it: the task's train and evaluate on the client side, the fog
broker's example-weighted mean, Flower's strategy at the cloud. Only MQTT is left out.

- `experiment`: the experiment file (a base config, variants, a sweep) and the flags over it.
- `workers`: the clients' side, in worker processes that each own a share of the clients.
- `hierarchy`: one federated run: fog aggregation, edge rounds, the cloud strategy, traffic.
- `centralized`: the baseline trained on the union of the clients' data.
- `runner`: every variant of an experiment, and the output folder it writes.
- `results`, `plots`: reading any output folder (`fogfl sim` or `fogfl up`), its summary
  figures, and its PNGs; `cli`: the `sim` and `report` commands.
"""
