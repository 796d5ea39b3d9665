import json
import stat

import pytest

from common.wire.integrity import ConnectVerifier, KeyRegistry, connect_proof, read_key_file
from common.wire.protocol import ProtocolError
from fl_server.keys_cli import create_keys, main

KEY = b"k" * 32
CHALLENGE = {"challenge": "ab" * 16, "server_id": "server-a"}


def verifier():
    return ConnectVerifier(KeyRegistry({"n0": KEY}), skew_s=60, server_id="server-a")


def proof_for(v: ConnectVerifier, key: bytes, node_id: str, timestamp: float, *, now: float = 1000) -> dict:
    challenge = v.issue_challenge(now=now)
    return connect_proof(key, node_id, challenge=challenge["challenge"], server_id=challenge["server_id"],
                         timestamp=timestamp)


def test_connect_proof_verifies_once_and_only_with_the_right_key():
    v = verifier()
    proof = proof_for(v, KEY, "n0", 1000)
    v.verify("n0", proof, now=1010)
    with pytest.raises(ProtocolError) as again:
        v.verify("n0", proof, now=1011)
    assert again.value.reason == "unknown_challenge"  # the challenge was used: a replay is not valid again


def test_a_proof_is_valid_only_at_the_server_that_issued_its_challenge():
    """A hello captured on the wire, or harvested by a fake server, is not valid at another server process
    (a restarted one included): challenges live in the process that issued them, and name it."""
    first, restarted = verifier(), ConnectVerifier(KeyRegistry({"n0": KEY}), skew_s=60)
    proof = proof_for(first, KEY, "n0", 1000)
    with pytest.raises(ProtocolError) as elsewhere:
        restarted.verify("n0", proof, now=1001)
    assert elsewhere.value.reason == "wrong_server"
    same_id = ConnectVerifier(KeyRegistry({"n0": KEY}), skew_s=60, server_id="server-a")
    with pytest.raises(ProtocolError) as unissued:
        same_id.verify("n0", proof, now=1001)
    assert unissued.value.reason == "unknown_challenge"
    forged = connect_proof(KEY, "n0", challenge="ab" * 16, server_id="server-a", timestamp=1000)
    with pytest.raises(ProtocolError) as made_up:
        first.verify("n0", forged, now=1001)
    assert made_up.value.reason == "unknown_challenge"
    first.verify("n0", proof, now=1001)  # where it was issued, it is good once


def test_a_challenge_expires():
    v = ConnectVerifier(KeyRegistry({"n0": KEY}), skew_s=300, server_id="server-a")  # the proof itself is fresh
    proof = proof_for(v, KEY, "n0", 1000, now=1000)
    with pytest.raises(ProtocolError) as late:
        v.verify("n0", proof, now=1000 + v.challenge_ttl_s + 1)
    assert late.value.reason == "unknown_challenge"


V = verifier()


@pytest.mark.parametrize(
    ("node_id", "auth", "reason"),
    [
        ("n0", proof_for(V, b"x" * 32, "n0", 1000), "bad_signature"),
        ("n0", proof_for(V, KEY, "n1", 1000), "bad_signature"),  # n1's proof replayed as n0
        ("n0", proof_for(V, KEY, "n0", 800), "stale_proof"),
        ("n0", {}, "unauthenticated"),
        ("n0", {"ts": "1000", "nonce": "abcdefgh", "mac": "0" * 64}, "unauthenticated"),
        ("n0", {"ts": 1000, "nonce": "abcdefgh", "mac": "0" * 64}, "no_challenge"),  # a version-1 proof
        ("stranger", proof_for(V, KEY, "stranger", 1000), "unknown_node"),
    ],
)
def test_bad_connect_proofs_are_refused_with_a_reason(node_id, auth, reason):
    with pytest.raises(ProtocolError) as refused:
        V.verify(node_id, auth, now=1000)
    assert refused.value.reason == reason


def test_fl_keys_writes_owner_only_files_that_load_and_refuses_to_overwrite(tmp_path):
    registry, out = tmp_path / "keys" / "registry.json", tmp_path / "keys"
    paths = create_keys(registry, out, ["n0", "n1"])
    loaded = KeyRegistry.load(registry)
    assert loaded.node_ids() == ["n0", "n1"]
    for path in [registry, *paths]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(out / "n1.key") == loaded.key_of("n1")
    with pytest.raises(ValueError, match="already have keys"):
        create_keys(registry, out, ["n1"])
    old = loaded.key_of("n1")
    create_keys(registry, out, ["n1", "n2"], rotate=True)
    assert KeyRegistry.load(registry).key_of("n1") != old
    assert main(["create", "--registry", str(registry), "--out-dir", str(out), "bad id!"]) == 2


def test_registry_loading_names_the_problem(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format": "fl-keys/1", "nodes": {"n0": "zz"}}))
    with pytest.raises(ValueError, match=r"r\.json"):
        KeyRegistry.load(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a node key registry"):
        KeyRegistry.load(path)


@pytest.mark.parametrize(
    "auth",
    [
        {"ts": 1000, "nonce": "abcdefgh\u00e9", "mac": "0" * 64, **CHALLENGE},
        {"ts": 1000, "nonce": "abcdefgh", "mac": "\u00e9" * 64, **CHALLENGE},
        {"ts": 10**400, "nonce": "abcdefgh", "mac": "0" * 64, **CHALLENGE},
        {"ts": 1000, "nonce": "abc\ndefgh", "mac": "0" * 64, **CHALLENGE},
        {"ts": 1000, "nonce": "abcdefgh", "mac": "0" * 64, "challenge": "zz", "server_id": "server-a"},
        {"ts": 1000, "nonce": "abcdefgh", "mac": "0" * 64, "challenge": "ab" * 16, "server_id": ["x"]},
    ],
)
def test_out_of_range_proof_fields_are_bad_proofs_not_crashes(auth):
    with pytest.raises(ProtocolError) as refused:
        verifier().verify("n0", auth, now=1000)
    assert refused.value.reason == "bad_proof"


def test_ids_with_a_trailing_newline_are_refused():
    from common.wire.protocol import check_node_id, check_session_id

    for check in (check_node_id, check_session_id):
        with pytest.raises(ProtocolError):
            check("alice\n")
