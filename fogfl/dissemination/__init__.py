"""The dissemination study: how one update reaches N nodes through an MQTT broker, CoAP,
push gossip, and fogfl's own bridged fog brokers (`fogfl dissemination`).

- `graphs`: the graphs gossip runs on (sparse Erdős–Rényi adjacency, the complete graph).
- `gossip`: synchronous push gossip, vectorised over nodes and concurrent updates.
- `models`: closed-form counts and coverage for broker, CoAP and fog-hierarchy delivery.
- `experiments`: the five model experiments (load, failure, partition, balance, fog).
- `live`: one event through a real Mosquitto, counted by its ``$SYS`` tree.
- `plots`, `study`: the PNGs, CSVs and summary.json of a run; `cli`: the command.

What each model assumes is written down in docs/dissemination.md.
"""
