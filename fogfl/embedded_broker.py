"""The embedded fallback broker (amqtt, pure Python) as a process of its own.

For machines without a Mosquitto binary: MQTT 3.1.1 only, several times slower than
Mosquitto, fine for small models. Run: ``python -m fogfl.embedded_broker --port P``.

Persistence is best-effort at most: everything lives in memory, so a restart loses
retained messages and sessions, and amqtt 0.11 answers "session present" to a returning
persistent client without delivering what was published while it was away (measured).
Publishes still wait through an outage and sessions subscribe again after it.

Security, with the files the run's Mosquitto reads (see `fogfl.embedded_security` for what
is enforced and how)::

    python -m fogfl.embedded_broker --port P [--host H]
        [--password-file FILE] [--acl-file FILE]
        [--cafile CA --certfile CERT --keyfile KEY]

With --cafile the port speaks TLS only and requires a client certificate signed by CA; the
user is its common name, so --password-file does not go with it. A missing or malformed
file stops the start with exit code 2 and one line saying which file and why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fogfl.errors import ConfigError
from fogfl.logs import FORMAT

if TYPE_CHECKING:
    from fogfl.embedded_security import BrokerPolicy


class _ProbesAreNotErrors(logging.Filter):
    """amqtt 0.11 logs an ERROR for every connection closed before its CONNECT; that is what
    a readiness or health check does (open the port, close it), on every healthy start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No data from ")


async def serve(
    host: str,
    port: int,
    policy: BrokerPolicy | None = None,
    tls: ssl.SSLContext | None = None,
    tls_files: dict[str, str] | None = None,
) -> None:
    """Serve MQTT on host:port until killed; open to anyone unless `policy` enforces files."""
    listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}
    broker: Any
    if policy is None or not policy.enforced:
        from amqtt.broker import Broker

        broker = Broker(
            {
                "listeners": {"default": listener},
                "sys_interval": 0,
                "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
                "topic-check": {"enabled": False},
            }
        )
    else:
        from fogfl import embedded_security

        if tls is not None:
            listener.update(ssl=True, **(tls_files or {}))
        hooks = {"policy": policy}
        plugins = {
            f"{embedded_security.__name__}.{plugin.__name__}": hooks
            for plugin in (embedded_security.PolicyAuthPlugin, embedded_security.PolicyTopicPlugin)
        }
        config = {"listeners": {"default": listener}, "plugins": plugins}
        broker = embedded_security.SecureBroker(config, policy, tls)
        embedded_security.log.info(
            "serving on %s:%s%s, enforcing %s",
            host,
            port,
            " (TLS only)" if tls is not None else "",
            policy.describe(),
        )
    await broker.start()
    await asyncio.Event().wait()


def _secured(args: argparse.Namespace) -> tuple[BrokerPolicy, ssl.SSLContext | None]:
    """The policy and TLS context the options ask for; ConfigError on a bad file or mix."""
    tls_options = {"--cafile": args.cafile, "--certfile": args.certfile, "--keyfile": args.keyfile}
    given = [name for name, value in tls_options.items() if value is not None]
    if given and len(given) != len(tls_options):
        missing = ", ".join(name for name in tls_options if name not in given)
        raise ConfigError(f"{', '.join(given)} also needs {missing}: TLS takes all three")
    if given and args.password_file is not None:
        raise ConfigError(
            "--password-file does not go with --cafile: with client certificates the user is "
            "the certificate's common name and no password is checked (Mosquitto's "
            "use_identity_as_username); pass one of them"
        )
    from fogfl import embedded_security

    problem = embedded_security.amqtt_internals_problem()
    if problem:
        raise ConfigError(problem)
    policy = embedded_security.load_policy(args.password_file, args.acl_file, bool(given))
    tls = None
    if given:
        tls = embedded_security.client_certificate_context(args.cafile, args.certfile, args.keyfile)
    if policy.acl is not None and policy.passwords is None and tls is None:
        embedded_security.log.warning(
            "an ACL file without --password-file or --cafile trusts whatever username a "
            "client claims"
        )
    return policy, tls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, help="Mosquitto password file ($7$ hashes)")
    parser.add_argument("--acl-file", type=Path, help="Mosquitto ACL file (user/topic lines)")
    parser.add_argument("--cafile", type=Path, help="CA that signs the client certificates")
    parser.add_argument("--certfile", type=Path, help="the broker's certificate (PEM)")
    parser.add_argument("--keyfile", type=Path, help="the broker's private key (PEM)")
    args = parser.parse_args()
    # amqtt 0.11 warns about its own legacy config keys on every start; they are not ours.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR, format=FORMAT)
    logging.getLogger("fogfl").setLevel(logging.INFO)
    logging.getLogger("amqtt.broker").addFilter(_ProbesAreNotErrors())
    policy, tls = None, None
    try:
        if any(
            value is not None
            for value in (
                args.password_file,
                args.acl_file,
                args.cafile,
                args.certfile,
                args.keyfile,
            )
        ):
            policy, tls = _secured(args)
    except ConfigError as error:
        print(f"embedded broker: {error}", file=sys.stderr)
        sys.exit(2)
    tls_files = {name: str(getattr(args, name)) for name in ("cafile", "certfile", "keyfile")}
    asyncio.run(serve(args.host, args.port, policy, tls, tls_files))


if __name__ == "__main__":
    main()
