"""Emulated network links: link models (rate over time, latency with jitter, outages) from
fixed parameters, the seed's scenarios or throughput traces; the analytic transfer times
`fogfl sim` uses; and the userspace TCP proxies that shape a client's traffic to its broker
(`python -m fogfl.links`). See docs/links.md."""
