"""The worked example in docs/protocol.md ("Keys and MACs, byte by byte") is what the code computes."""

import re
from pathlib import Path

import numpy as np

from common.wire.integrity import _encode_fields, connect_proof, read_key_file, record_mac, signed_headers
from common.wire.protocol import KIND_UPDATE, split_weights

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


def documented(label: str) -> str:
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {label} |"))
    return "".join(re.findall(r"`([0-9a-f]+)`", row.split("|")[2]))


def test_the_documented_connect_proof_and_record_mac_are_what_the_code_computes(tmp_path):
    key_file = tmp_path / "site-a.key"
    key_file.write_text(documented("key (hex, as in the key file)") + "\n")
    key_file.chmod(0o600)
    key = read_key_file(key_file)  # the key is the hex-decoded bytes
    assert key == bytes(range(32))
    fields = _encode_fields(b"fl-connect/2", b"site-a", b"3f2a9c1d5e7b8a60", b"00112233445566778899aabbccddeeff",
                            b"1767225600", b"0123456789abcdef")
    assert fields.hex() == documented("encoded connect fields (hex)")
    proof = connect_proof(key, "site-a", challenge="00112233445566778899aabbccddeeff", server_id="3f2a9c1d5e7b8a60",
                          timestamp=1767225600, nonce="0123456789abcdef")
    assert proof["mac"] == documented("connect `mac`")
    mac = record_mac(key, kind="update", session_id="s1", server_round=3, node_id="site-a", record_key=b"site-a",
                     value=b'{"v":1}')
    assert mac.hex() == documented("`fl.mac`")


def test_signed_headers_carry_the_documented_fields():
    chunk = next(split_weights([np.zeros(1, np.float32)], kind=KIND_UPDATE, session_id="s1", server_round=3,
                               node_id="site-a", num_samples=1))
    headers = dict(signed_headers(bytes(range(32)), chunk, b'{"v":1}'))
    assert headers == {"fl.kind": b"update", "fl.session": b"s1", "fl.round": b"3", "fl.node": b"site-a",
                       "fl.mac": documented("`fl.mac`").encode()}
