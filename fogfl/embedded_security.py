"""Mosquitto's security for the embedded broker: password file, ACL file, client certificates.

The embedded broker (amqtt 0.11.4, MQTT 3.1.1) reads the very files the Mosquitto of a run
reads (`fogfl.security.mosquitto_files`) and enforces them the way Mosquitto 2.0 does:

- With a password file, a connection must name a user of the file and give its password;
  anonymous, unknown-user and wrong-password connections get CONNACK "not authorised".
- With client certificates (``--cafile``), the TLS handshake requires a certificate signed
  by that CA, and the user is the certificate's common name, whatever CONNECT claims
  (Mosquitto's ``require_certificate true`` + ``use_identity_as_username true``).
- With an ACL file, a user receives only messages on topics its read rules match, and a
  publish its write rules do not match is acknowledged and dropped (MQTT 3.1.1 cannot tell
  the publisher), logged with the user and the topic. A will on a topic the user may not
  write is dropped at connect, as Mosquitto never publishes it.
- A subscription is *narrowed*, not refused, when it is wider than the user's read rules
  (``fl/#`` with read on ``fl/global_model``): it is granted and delivers what the rules
  allow, which is what Mosquitto delivers, so a role works alike on both brokers. A filter
  that no read rule overlaps can never deliver anything: it is refused (SUBACK 0x80), so
  the client learns of the ACL mistake at once, where Mosquitto grants it and stays silent.

amqtt's own hooks, plugins with ``authenticate`` and ``topic_filtering`` (for subscribe,
publish and each delivery), carry most of it. `SecureBroker` covers what amqtt 0.11.4 does
around those hooks, each a measured gap: it closes a refused connection without a CONNACK
(clients retry forever instead of stopping); it deletes a client id's kept session, and
copies a returning client's username and will into it, *before* authenticating; it sends
a connecting client the retained messages of every filter anyone holds, unchecked; and its
TLS listener makes client certificates optional. These overrides touch amqtt internals, so
`amqtt_internals_problem` checks at start that they are still where 0.11.4 has them.

Known limits: without a password file or certificates, an ACL trusts the username a client
claims, as Mosquitto with ``allow_anonymous true`` does; a hash in the password file that is
not a well-formed ``$7$`` hash matches no password rather than failing the start.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fogfl.errors import ConfigError
from fogfl.logs import role_logger
from fogfl.security.mosquitto_files import (
    AclRule,
    read_acl_file,
    read_password_file,
    verify_password,
)

log = role_logger("embedded-broker")
_LOGIN = "fogfl_login"  # the attribute a session's authenticated login is kept in


def topic_filter_problem(topic_filter: str) -> str:
    """Why `topic_filter` is not a valid MQTT topic filter, or "" if it is."""
    if not topic_filter:
        return "it is empty"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' may only stand alone as the last level"
        if "+" in level and level != "+":
            return "'+' may only stand alone as a whole level"
    return ""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a message on `topic` matches `topic_filter` (MQTT 3.1.1, section 4.7)."""
    if topic.startswith("$") and topic_filter.startswith(("+", "#")):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True
        if index >= len(levels) or level not in ("+", levels[index]):
            return False
    return len(wanted) == len(levels)


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both filters."""
    for one, other in ((first, second), (second, first)):
        if one.startswith("$") and other.startswith(("+", "#")):
            return False
    a, b = first.split("/"), second.split("/")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if "+" not in (x, y) and x != y:
            return False
    return True


@dataclass
class Login:
    """Who a session authenticated as, and the CONNECT fields amqtt may overwrite later."""

    user: str | None
    username: str | None
    password: str | None
    will: tuple[Any, ...]
    keep_alive: int


_WILL_FIELDS = ("will_flag", "will_topic", "will_message", "will_qos", "will_retain")


@dataclass
class BrokerPolicy:
    """Who may connect, and which topics each user may read and write.

    `passwords` None: no password check; `acl` None: every user may do everything;
    `certificates`: the user is the client certificate's common name.
    """

    passwords: dict[str, str] | None = None
    acl: dict[str, list[AclRule]] | None = None
    certificates: bool = False

    @property
    def enforced(self) -> bool:
        return self.passwords is not None or self.acl is not None or self.certificates

    def describe(self) -> str:
        parts = []
        if self.certificates:
            parts.append("client certificates (user = common name)")
        if self.passwords is not None:
            parts.append(f"a password file of {len(self.passwords)} user(s)")
        if self.acl is not None:
            parts.append(f"an ACL file for {len(self.acl)} user(s)")
        return ", ".join(parts) or "nothing (open to anyone)"

    def may_read(self, user: str | None, topic: str) -> bool:
        return self._allowed(user, "read", lambda rule: topic_matches(rule, topic))

    def may_write(self, user: str | None, topic: str) -> bool:
        return self._allowed(user, "write", lambda rule: topic_matches(rule, topic))

    def may_subscribe(self, user: str | None, topic_filter: str) -> bool:
        """Whether the filter can deliver anything to `user` (deliveries are checked apart)."""
        return self._allowed(user, "read", lambda rule: filters_overlap(rule, topic_filter))

    def _allowed(self, user: str | None, access: Literal["read", "write"], fits: Any) -> bool:
        if self.acl is None:
            return True
        rules = self.acl.get(user, []) if user is not None else []
        return any(rule.allows(access) and fits(rule.topic) for rule in rules)

    def authenticate(self, session: Any) -> str:
        """Admit `session` (returns "") or say why not; an admitted one keeps its `Login`."""
        kept: Login | None = getattr(session, _LOGIN, None)
        user: str | None = session.username
        if self.certificates:
            user = _common_name(session.ssl_object)
            if user is None:
                return "its client certificate has no common name"
            session.username = user
        elif self.passwords is not None:
            if not user:
                return "it gave no username (anonymous connections are not allowed)"
            encoded = self.passwords.get(user)
            if encoded is None or not verify_password(session.password or "", encoded):
                return f"wrong username or password for user {user!r}"
        if kept is not None and kept.user != user:
            return (
                f"client id {session.client_id!r} holds a session of user {kept.user!r}; "
                f"user {user!r} may not take it over"
            )
        if session.will_flag and not self.may_write(user, session.will_topic):
            log.warning(
                "dropped the will of user %s (client id %s) on %s: its ACL does not allow "
                "writing there",
                user,
                session.client_id,
                session.will_topic,
            )
            session.will_flag = False
        setattr(session, _LOGIN, _login_of(session, user))
        return ""

    def restore(self, session: Any) -> None:
        """Undo what a refused CONNECT wrote into a session kept for its client id."""
        kept: Login | None = getattr(session, _LOGIN, None)
        if kept is None:
            return
        session.username, session.password = kept.username, kept.password
        for name, value in zip(_WILL_FIELDS, kept.will, strict=True):
            setattr(session, name, value)
        session.keep_alive = kept.keep_alive

    def user_of(self, session: Any) -> str | None:
        """The user a session authenticated as (never what a later CONNECT claimed)."""
        kept: Login | None = getattr(session, _LOGIN, None)
        return None if kept is None else kept.user


def _login_of(session: Any, user: str | None) -> Login:
    will = tuple(getattr(session, name) for name in _WILL_FIELDS)
    return Login(user, session.username, session.password, will, session.keep_alive)


def _common_name(ssl_object: ssl.SSLObject | None) -> str | None:
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    subject: Any = (certificate or {}).get("subject", ())  # ((("commonName", "x"),), ...)
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None


class PolicyAuthPlugin(BaseAuthPlugin):
    """amqtt's authentication hook, answered by the `BrokerPolicy`."""

    @dataclass
    class Config:
        policy: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        policy: BrokerPolicy = self.config.policy
        refusal = policy.authenticate(session)
        if refusal:
            log.warning(
                "refused the connection of client id %s from %s:%s: %s",
                session.client_id,
                session.remote_address,
                session.remote_port,
                refusal,
            )
        return not refusal


class PolicyTopicPlugin(BaseTopicPlugin):
    """amqtt's topic hook (subscribe, publish, every delivery), answered by the ACL."""

    @dataclass
    class Config:
        policy: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        policy: BrokerPolicy = self.config.policy
        if session is None or topic is None:
            return False
        user = policy.user_of(session)
        if action == Action.RECEIVE:
            return policy.may_read(user, topic)
        if action == Action.PUBLISH:
            allowed = policy.may_write(user, topic)
            if not allowed:
                log.warning(
                    "dropped a publish by user %s (client id %s) on %s: its ACL does not allow "
                    "writing there",
                    user,
                    session.client_id,
                    topic,
                )
            return allowed
        if action == Action.SUBSCRIBE:
            allowed = policy.may_subscribe(user, topic)
            if not allowed:
                log.warning(
                    "refused the subscription of user %s (client id %s) to %s: no read rule "
                    "of its ACL overlaps it",
                    user,
                    session.client_id,
                    topic,
                )
            return allowed
        return False


class SecureBroker(Broker):
    """amqtt's broker with the gaps around its hooks closed (see the module docstring)."""

    def __init__(
        self, config: dict[str, Any], policy: BrokerPolicy, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(config)
        self._policy = policy
        self._tls = tls

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        # amqtt's own context accepts clients without a certificate (CERT_OPTIONAL).
        if self._tls is None:
            raise ConfigError("the TLS listener has no client-certificate context")
        return self._tls

    async def _delete_session(self, client_id: str) -> None:
        # amqtt calls this for a clean-session CONNECT before authenticating it; the
        # deletion happens in _handle_client_session once the CONNECT is admitted.
        return None

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Any,
        handler: Any,
        server: Any,
        listener_name: str,
    ) -> None:
        listener = self.listeners_config[listener_name]
        if not await self._authenticate(client_session, listener):
            self._policy.restore(client_session)
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return
        if client_session.clean_session and client_session.client_id in self._sessions:
            await Broker._delete_session(self, client_session.client_id)
        # amqtt authenticates once more in there: cheap, and answers the same.
        await super()._handle_client_session(
            reader, writer, client_session, handler, server, listener_name
        )

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        # amqtt calls this on connect for every filter anyone holds, unchecked.
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, [])
        if not any(holder.client_id == session.client_id for holder, _ in holders):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        user = self._policy.user_of(session)
        sends = [
            handler.mqtt_publish(message.topic, message.data, min(qos, message.qos or qos), True)
            for topic, message in list(self._retained_messages.items())
            if topic_matches(topic_filter, topic) and self._policy.may_read(user, topic)
        ]
        if sends:
            await asyncio.gather(*sends)


_OVERRIDDEN = {
    "_create_ssl_context": ["listener"],
    "_delete_session": ["self", "client_id"],
    "_handle_client_session": [
        "self",
        "reader",
        "writer",
        "client_session",
        "handler",
        "server",
        "listener_name",
    ],
    "_publish_retained_messages_for_subscription": ["self", "subscription", "session"],
    "_authenticate": ["self", "session", "_"],
    "_get_handler": ["self", "session"],
}


def amqtt_internals_problem() -> str:
    """Why `SecureBroker` cannot trust this amqtt's internals, or "" if it can."""
    for name, parameters in _OVERRIDDEN.items():
        method = getattr(Broker, name, None)
        if method is None or list(inspect.signature(method).parameters) != parameters:
            import amqtt

            return (
                f"this amqtt ({getattr(amqtt, '__version__', '?')}) changed Broker.{name}, which "
                "the embedded broker relies on to enforce passwords, ACLs and certificates "
                "(written for amqtt 0.11.4); install amqtt==0.11.4, or Mosquitto"
            )
    return ""


def load_policy(
    password_file: Path | None, acl_file: Path | None, certificates: bool
) -> BrokerPolicy:
    """The policy these Mosquitto files describe; ConfigError naming the file otherwise."""
    passwords = None
    if password_file is not None:
        passwords = read_password_file(_read("password file", password_file))
    acl = None
    if acl_file is not None:
        acl = read_acl_file(_read("ACL file", acl_file))
        for user, rules in acl.items():
            for rule in rules:
                problem = topic_filter_problem(rule.topic)
                if problem:
                    raise ConfigError(
                        f"ACL file {acl_file}: user {user}: topic {rule.topic!r} is not a "
                        f"topic filter: {problem}"
                    )
    return BrokerPolicy(passwords, acl, certificates)


def _read(what: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the {what} {path}: {error}") from error


def client_certificate_context(cafile: Path, certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate signed by `cafile`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load the broker certificate {certfile} with key {keyfile}: {error}"
        ) from error
    try:
        context.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load the CA certificate {cafile}: {error}") from error
    return context
