import argparse
import inspect
import json
import logging
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from common.transport.kafka_security import PASSWORD_ENV, KafkaSecurity, Secret, add_kafka_security_options

PASSWORD = "hunter2-s3cret"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_kafka_security_options(parser)
    return parser.parse_args(argv)


def from_argv(argv: list[str]) -> KafkaSecurity:
    return KafkaSecurity.from_args(parse(argv))


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    # Only existence is checked here; the contents are kafka-python's business.
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    return files


def test_defaults_are_plaintext_and_add_no_client_arguments():
    security = from_argv([])
    assert security == KafkaSecurity()
    assert security.to_client_config() == {}


def test_ssl_maps_to_kafka_python_keywords(pem_files):
    security = from_argv(["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", str(pem_files["ca"]),
                          "--kafka-ssl-certfile", str(pem_files["cert"]), "--kafka-ssl-keyfile",
                          str(pem_files["key"]), "--kafka-ssl-no-check-hostname"])
    assert security.to_client_config() == {
        "security_protocol": "SSL",
        "ssl_cafile": str(pem_files["ca"]),
        "ssl_certfile": str(pem_files["cert"]),
        "ssl_keyfile": str(pem_files["key"]),
        "ssl_check_hostname": False,
    }


def test_ssl_without_files_uses_system_trust_and_checks_hostname():
    assert from_argv(["--kafka-security-protocol", "SSL"]).to_client_config() == {
        "security_protocol": "SSL", "ssl_check_hostname": True}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_maps_to_kafka_python_keywords(mechanism):
    security = from_argv(["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", mechanism,
                          "--kafka-sasl-username", "alice", "--kafka-sasl-password", PASSWORD])
    assert security.to_client_config() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


def test_sasl_ssl_combines_both(pem_files):
    security = from_argv(["--kafka-security-protocol", "SASL_SSL", "--kafka-ssl-cafile", str(pem_files["ca"]),
                          "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", "alice",
                          "--kafka-sasl-password", PASSWORD])
    assert security.to_client_config() == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(pem_files["ca"]),
        "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


@pytest.mark.parametrize("client_class", [KafkaProducer, KafkaConsumer, KafkaAdminClient])
def test_every_key_is_a_config_of_every_kafka_python_client(pem_files, client_class):
    security = KafkaSecurity(security_protocol="SASL_SSL", ssl_cafile=pem_files["ca"],
                             ssl_certfile=pem_files["cert"], ssl_keyfile=pem_files["key"],
                             ssl_check_hostname=False, sasl_mechanism="PLAIN", sasl_username="alice",
                             sasl_password=PASSWORD)
    config = security.to_client_config()
    assert len(config) == 8
    assert set(config) <= set(client_class.DEFAULT_CONFIG), inspect.getfile(client_class)


@pytest.mark.parametrize(("argv", "message"), [
    (["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-username", "a", "--kafka-sasl-password", "p"],
     "--kafka-sasl-mechanism"),
    (["--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-password", "p"],
     "--kafka-sasl-username"),
    (["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username",
      "a"], "FL_KAFKA_SASL_PASSWORD"),
    (["--kafka-sasl-username", "a"], "--kafka-sasl-username: only used with --kafka-security-protocol SASL"),
    (["--kafka-security-protocol", "SSL", "--kafka-sasl-mechanism", "PLAIN"], "--kafka-sasl-mechanism: only used"),
    (["--kafka-ssl-no-check-hostname"], "--kafka-ssl-no-check-hostname: only used with"),
    (["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username",
      "a", "--kafka-sasl-password", "p", "--kafka-ssl-no-check-hostname"], "not SASL_PLAINTEXT"),
    (["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", "/nonexistent/ca.pem"],
     "--kafka-ssl-cafile: no such file: /nonexistent/ca.pem"),
])
def test_inconsistent_options_are_rejected_naming_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        from_argv(argv)


def test_ssl_file_options_with_plaintext_are_rejected(pem_files):
    with pytest.raises(ValueError, match="--kafka-ssl-cafile: only used with --kafka-security-protocol SSL"):
        from_argv(["--kafka-ssl-cafile", str(pem_files["ca"])])


@pytest.mark.parametrize("given", ["cert", "key"])
def test_certfile_and_keyfile_go_together(pem_files, given):
    with pytest.raises(ValueError, match="--kafka-ssl-certfile and --kafka-ssl-keyfile go together"):
        from_argv(["--kafka-security-protocol", "SSL", f"--kafka-ssl-{given}file", str(pem_files[given])])


def test_missing_keyfile_is_reported(pem_files, tmp_path):
    with pytest.raises(ValueError, match="--kafka-ssl-keyfile: no such file"):
        from_argv(["--kafka-security-protocol", "SSL", "--kafka-ssl-certfile", str(pem_files["cert"]),
                   "--kafka-ssl-keyfile", str(tmp_path / "missing.pem")])


def test_unknown_choices_are_argparse_errors():
    with pytest.raises(SystemExit):
        parse(["--kafka-security-protocol", "TLS"])
    with pytest.raises(SystemExit):
        parse(["--kafka-sasl-mechanism", "GSSAPI"])


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match="--kafka-sasl-mechanism must be one of"):
        KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI", sasl_username="a",
                      sasl_password="p")


def test_environment_supplies_every_setting(monkeypatch, pem_files):
    monkeypatch.setenv("FL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FL_KAFKA_SSL_CAFILE", str(pem_files["ca"]))
    monkeypatch.setenv("FL_KAFKA_SSL_NO_CHECK_HOSTNAME", "1")
    monkeypatch.setenv("FL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("FL_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("FL_KAFKA_SASL_PASSWORD", PASSWORD)
    assert from_argv([]) == KafkaSecurity(security_protocol="SASL_SSL", ssl_cafile=pem_files["ca"],
                                          ssl_check_hostname=False, sasl_mechanism="SCRAM-SHA-256",
                                          sasl_username="alice", sasl_password=PASSWORD)


def test_password_flag_overrides_environment(monkeypatch):
    monkeypatch.setenv("FL_KAFKA_SASL_PASSWORD", PASSWORD)
    security = from_argv(["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN",
                          "--kafka-sasl-username", "alice", "--kafka-sasl-password", "from-flag"])
    assert security.to_client_config()["sasl_plain_password"] == "from-flag"


def test_password_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("FL_KAFKA_SASL_PASSWORD", PASSWORD)
    parser = argparse.ArgumentParser()
    add_kafka_security_options(parser)
    help_text = parser.format_help()
    assert PASSWORD not in help_text
    assert "FL_KAFKA_SASL_PASSWORD" in " ".join(help_text.split())
    assert "prefer the environment variable" in " ".join(help_text.split())
    args = parser.parse_args(["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN",
                              "--kafka-sasl-username", "alice"])
    assert PASSWORD not in repr(args)
    with pytest.raises(TypeError):  # a namespace dump fails instead of writing the password
        json.dumps(vars(args))
    security = KafkaSecurity.from_args(args)
    assert security.sasl_password == PASSWORD
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("kafka %s / %r / %s", security, security, security.describe())
    for shown in (repr(security), str(security), security.describe(), caplog.text):
        assert PASSWORD not in shown
        assert "***" in shown
    assert "user=alice" in security.describe()


def test_secret_masks_but_reveals_on_request():
    secret = Secret(PASSWORD)
    assert secret.reveal() == PASSWORD
    assert PASSWORD not in f"{secret} {secret!r}"
    assert secret == Secret(PASSWORD) != Secret("other")


def test_the_sasl_password_never_reaches_the_session_history(monkeypatch):
    from fl_server.cli import build_parser
    from fl_server.config import ServerConfig

    monkeypatch.setenv(PASSWORD_ENV, "hunter2-secret")
    args = build_parser().parse_args(["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN",
                                      "--kafka-sasl-username", "fl"])
    text = json.dumps(ServerConfig.from_args(args).history_settings())
    assert "hunter2" not in text and "kafka_sasl_username" in text
    assert KafkaSecurity.from_args(args).to_client_config()["sasl_plain_password"] == "hunter2-secret"
