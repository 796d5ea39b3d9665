"""Kafka SSL/SASL settings: command-line options, validation and the matching kafka-python keyword arguments.

``KafkaSecurity.to_client_config()`` returns exactly the keyword arguments that ``KafkaProducer``,
``KafkaConsumer`` and ``KafkaAdminClient`` accept (kafka-python 3.0: ``security_protocol``, ``ssl_cafile``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ``sasl_mechanism``, ``sasl_plain_username``,
``sasl_plain_password``), so callers splat it into the constructor. PLAINTEXT gives ``{}``: no change.

The SASL password never appears in ``repr``/``describe()``; on the parsed ``argparse.Namespace`` it is a
``Secret`` (masked in ``--help`` and in any dump of the namespace) that ``from_args`` unwraps.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import add_flag, add_option

logger = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})

PASSWORD_ENV = "FL_KAFKA_SASL_PASSWORD"
MASK = "***"


class Secret:
    """A string that shows as ``***`` in ``str``/``repr`` (help text, logged or dumped namespaces).

    Deliberately not a ``str`` subclass and not JSON-serializable: writing it anywhere by accident fails
    instead of leaking the value. Read it with ``reveal()``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def add_kafka_security_options(parser: argparse.ArgumentParser) -> None:
    """Register the ``--kafka-security-protocol`` / ``--kafka-ssl-*`` / ``--kafka-sasl-*`` options (env ``FL_*``)."""
    add_option(parser, "--kafka-security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS,
               help="protocol to the Kafka brokers")
    add_option(parser, "--kafka-ssl-cafile", type=Path,
               help="CA bundle that signed the brokers' certificates (SSL/SASL_SSL; default: system trust store)")
    add_option(parser, "--kafka-ssl-certfile", type=Path,
               help="client certificate for mutual TLS (SSL/SASL_SSL; needs --kafka-ssl-keyfile)")
    add_option(parser, "--kafka-ssl-keyfile", type=Path,
               help="private key of --kafka-ssl-certfile (SSL/SASL_SSL)")
    add_flag(parser, "--kafka-ssl-no-check-hostname",
             help="do not check that the broker certificate matches its host name (SSL/SASL_SSL)")
    add_option(parser, "--kafka-sasl-mechanism", choices=SASL_MECHANISMS,
               help="SASL mechanism (SASL_PLAINTEXT/SASL_SSL)")
    add_option(parser, "--kafka-sasl-username", help="SASL user name (SASL_PLAINTEXT/SASL_SSL)")
    add_option(parser, "--kafka-sasl-password", type=Secret,
               help=f"SASL password; prefer the environment variable {PASSWORD_ENV} over this flag, "
                    "since command-line flags are visible to other users in `ps`")


@dataclass(frozen=True, repr=False)  # __repr__ below masks the password
class KafkaSecurity:
    """How to reach the brokers; validated on construction (messages name the command-line flag)."""

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"--kafka-security-protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                             f"got {protocol!r}")
        ssl_given = {
            "--kafka-ssl-cafile": self.ssl_cafile is not None,
            "--kafka-ssl-certfile": self.ssl_certfile is not None,
            "--kafka-ssl-keyfile": self.ssl_keyfile is not None,
            "--kafka-ssl-no-check-hostname": not self.ssl_check_hostname,
        }
        sasl_given = {
            "--kafka-sasl-mechanism": self.sasl_mechanism is not None,
            "--kafka-sasl-username": self.sasl_username is not None,
            "--kafka-sasl-password": self.sasl_password is not None,
        }
        unused_ssl = [flag for flag, given in ssl_given.items() if given]
        if protocol not in SSL_PROTOCOLS and unused_ssl:
            raise ValueError(f"{', '.join(unused_ssl)}: only used with --kafka-security-protocol SSL or SASL_SSL, "
                             f"not {protocol}")
        if protocol not in SASL_PROTOCOLS:
            unused_sasl = [flag for flag, given in sasl_given.items() if given]
            if unused_sasl:
                raise ValueError(f"{', '.join(unused_sasl)}: only used with --kafka-security-protocol "
                                 f"SASL_PLAINTEXT or SASL_SSL, not {protocol}")
        else:
            missing = [flag for flag, given in sasl_given.items() if not given]
            if missing:
                hint = (f" (password: flag or environment variable {PASSWORD_ENV})"
                        if "--kafka-sasl-password" in missing else "")
                raise ValueError(f"--kafka-security-protocol {protocol} requires {', '.join(missing)}{hint}")
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"--kafka-sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                                 f"got {self.sasl_mechanism!r}")
            if not self.sasl_username:
                raise ValueError("--kafka-sasl-username must not be empty")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--kafka-ssl-certfile and --kafka-ssl-keyfile go together: give both or neither")
        for flag, path in (("--kafka-ssl-cafile", self.ssl_cafile), ("--kafka-ssl-certfile", self.ssl_certfile),
                           ("--kafka-ssl-keyfile", self.ssl_keyfile)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag}: no such file: {path}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KafkaSecurity:
        """Build from options registered by ``add_kafka_security_options``; raises ``ValueError`` if inconsistent."""
        password = args.kafka_sasl_password
        return cls(
            security_protocol=args.kafka_security_protocol,
            ssl_cafile=args.kafka_ssl_cafile,
            ssl_certfile=args.kafka_ssl_certfile,
            ssl_keyfile=args.kafka_ssl_keyfile,
            ssl_check_hostname=not args.kafka_ssl_no_check_hostname,
            sasl_mechanism=args.kafka_sasl_mechanism,
            sasl_username=args.kafka_sasl_username,
            sasl_password=password.reveal() if isinstance(password, Secret) else password,
        )

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in SSL_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    def to_client_config(self) -> dict[str, Any]:
        """Keyword arguments for KafkaProducer/KafkaConsumer/KafkaAdminClient; ``{}`` for PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_ssl:
            config["ssl_check_hostname"] = self.ssl_check_hostname
            for key, path in (("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile),
                              ("ssl_keyfile", self.ssl_keyfile)):
                if path is not None:
                    config[key] = str(path)
        if self.uses_sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password
        return config

    def describe(self) -> str:
        """One line for logs, with the password masked."""
        parts = [self.security_protocol]
        if self.uses_ssl:
            parts.append(f"ca={self.ssl_cafile or 'system'}")
            if self.ssl_certfile is not None:
                parts.append(f"cert={self.ssl_certfile}")
            if not self.ssl_check_hostname:
                parts.append("hostname-check=off")
        if self.uses_sasl:
            parts.append(f"sasl={self.sasl_mechanism} user={self.sasl_username} password={MASK}")
        return " ".join(parts)

    def __repr__(self) -> str:
        password = None if self.sasl_password is None else MASK
        return (f"KafkaSecurity(security_protocol={self.security_protocol!r}, ssl_cafile={self.ssl_cafile!r}, "
                f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}, "
                f"ssl_check_hostname={self.ssl_check_hostname!r}, sasl_mechanism={self.sasl_mechanism!r}, "
                f"sasl_username={self.sasl_username!r}, sasl_password={password!r})")
