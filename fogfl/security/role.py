"""What a role needs to take part securely: its MQTT login, its signing key, and the keys
it checks others' signatures against — or, with `security.insecure`, none of it."""

from __future__ import annotations

from dataclasses import dataclass

from fogfl.config import FogflConfig, MqttSettings, TlsSettings
from fogfl.errors import ConfigError
from fogfl.logs import RoleLogger
from fogfl.security.bundle import Credentials, load_credentials
from fogfl.security.identities import Identity
from fogfl.security.signing import Signer, TrustPolicy

OPEN_WARNING = (
    "running open (security.insecure): the broker and the Flower port accept anyone, and "
    "models are not signed; for experiments only"
)


@dataclass(frozen=True)
class RoleSecurity:
    identity: Identity
    mqtt: MqttSettings
    credentials: Credentials | None = None
    signer: Signer | None = None
    verify: TrustPolicy | None = None
    tls: bool = False

    @property
    def open(self) -> bool:
        return self.credentials is None


def role_security(config: FogflConfig, identity: Identity, log: RoleLogger) -> RoleSecurity:
    """`identity`'s credentials as the configuration points to them; ConfigError if a
    secure role has none."""
    settings = config.security
    if settings.insecure:
        log.warning(OPEN_WARNING)
        return RoleSecurity(identity, config.mqtt)
    if settings.credentials is None:
        raise ConfigError(
            f"{identity.name} has no credentials: set security.credentials "
            "(FOGFL_SECURITY__CREDENTIALS) to the directory `fogfl certs DIR` wrote, or run "
            "open with --insecure (security.insecure: true)"
        )
    credentials = load_credentials(settings.credentials, identity.name)
    mqtt = config.mqtt.model_copy(deep=True)
    if settings.tls:
        # The broker takes the identity from the certificate's common name.
        mqtt.tls = TlsSettings(
            enabled=True,
            ca_file=credentials.ca_file,
            cert_file=credentials.cert_file,
            key_file=credentials.key_file,
            insecure=config.mqtt.tls.insecure,
        )
    elif mqtt.username is None:
        mqtt.username = identity.name
        mqtt.password = credentials.password
    return RoleSecurity(
        identity,
        mqtt,
        credentials,
        credentials.signer() if identity.signs else None,
        credentials.trust(),
        settings.tls,
    )
