"""fogfl: hierarchical (client → fog → cloud) federated learning over MQTT, with Flower on top."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "1"
