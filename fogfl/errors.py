"""The one exception family of fogfl. Messages say what went wrong and what to do."""

from __future__ import annotations


class FogflError(Exception):
    """Base class of every error fogfl raises on purpose."""


class ConfigError(FogflError):
    """A configuration file, environment variable or flag holds an invalid value."""


class WireError(FogflError):
    """A message on the wire is malformed, oversized, of the wrong shape or not for us.

    `reason` is a short stable label (used to count rejections); the message explains it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[WireError], tuple[str, str]]:
        # Picklable, so an error inside a simulation worker process reaches the parent intact.
        return (type(self), (self.reason, str(self)))


class BrokerError(FogflError):
    """The MQTT broker cannot be reached, started or used."""


class TaskError(FogflError):
    """A workload (task) cannot load its data or build its model."""


class LinkError(FogflError):
    """An emulated link is misconfigured: a bad trace file, an unknown scenario, a bad spec."""


class BandwidthError(FogflError):
    """A bandwidth trace, a saved predictor or agent, or a controller's input is unusable."""
