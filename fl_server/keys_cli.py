"""``fl-keys``: issue the per-node secret keys the server's registry and each node hold, and the server's own
signing key pair (``create --server``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from common.cli import command_main
from common.config import add_flag, add_logging_options
from common.paillier.keys import PaillierPrivate
from common.wire.integrity import KeyRegistry, new_key, write_secret
from common.wire.protocol import check_node_id
from common.wire.server_key import ServerSigner

logger = logging.getLogger("fl_keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-keys",
        description="Create node keys: adds each node to the server's registry (JSON, give it to fl-server "
        "--node-keys) and writes <out-dir>/<node>.key (give it to that node's fl-node --key-file). "
        "Both files are created readable by their owner only. `create --server` makes the server's signing key "
        "pair: <out-dir>/server.key (fl-server --server-key) and <out-dir>/server.pub (give it to every node, "
        "fl-node --server-public-key, and to auditors, fl-audit --server-key). `create --paillier` makes the "
        "federation's Paillier key pair: <out-dir>/paillier.key.json (the decryptor's only: fl-decryptor --key) and "
        "<out-dir>/paillier.pub.json (fl-server and fl-node --paillier-public-key).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="issue keys for new nodes (or --rotate existing ones)")
    create.add_argument("node_ids", nargs="*", help="node ids (letters, digits, . _ -)")
    create.add_argument("--registry", type=Path, default=Path("keys/registry.json"), help="server-side registry")
    create.add_argument("--out-dir", type=Path, default=Path("keys"), help="where <node>.key files go")
    add_flag(create, "--rotate", help="replace the key of a node (or the server) that already has one",
             env="FL_KEYS_ROTATE")
    add_flag(create, "--server", help="also make the server's Ed25519 key pair: <out-dir>/server.key (private, "
             "mode 0600) and <out-dir>/server.pub (public)", env="FL_KEYS_SERVER")
    add_flag(create, "--paillier", help="also make the federation's Paillier key pair (with the decryptor's "
             "signing key): <out-dir>/paillier.key.json (private, mode 0600) and <out-dir>/paillier.pub.json",
             env="FL_KEYS_PAILLIER")
    create.add_argument("--paillier-bits", type=int, default=3072,
                        help="Paillier modulus size in bits (default 3072, ~128-bit security; 2048 is ~112-bit)")
    show = sub.add_parser("list", help="list the node ids in a registry (never the keys)")
    show.add_argument("--registry", type=Path, default=Path("keys/registry.json"))
    add_logging_options(parser)
    return parser


def planned_keys(registry_path: Path, node_ids: list[str], *, rotate: bool = False) -> dict[str, bytes]:
    """The registry's current keys, once ``node_ids`` are known to be valid and new (or ``rotate``)."""
    for node_id in node_ids:
        check_node_id(node_id)
    keys: dict[str, bytes] = {}
    if registry_path.exists():
        registry = KeyRegistry.load(registry_path)
        keys = {n: registry.key_of(n) or b"" for n in registry.node_ids()}
    clash = sorted(set(node_ids) & set(keys))
    if clash and not rotate:
        raise ValueError(f"node(s) {', '.join(clash)} already have keys in {registry_path} (use --rotate)")
    return keys


def write_keys(registry_path: Path, out_dir: Path, node_ids: list[str], keys: dict[str, bytes]) -> list[Path]:
    """Issue a new key for each of ``node_ids``, write its key file, then the registry with ``keys`` and them."""
    keys = dict(keys)
    written = []
    for node_id in node_ids:
        keys[node_id] = new_key()
        path = out_dir / f"{node_id}.key"
        write_secret(path, keys[node_id].hex() + "\n")
        written.append(path)
    write_secret(registry_path, json.dumps(KeyRegistry(keys).to_wire(), indent=2) + "\n")
    return written


def create_keys(registry_path: Path, out_dir: Path, node_ids: list[str], *, rotate: bool = False) -> list[Path]:
    """Add ``node_ids`` to the registry and write their key files; returns the key file paths."""
    return write_keys(registry_path, out_dir, node_ids, planned_keys(registry_path, node_ids, rotate=rotate))


def server_key_paths(out_dir: Path) -> tuple[Path, Path]:
    """Where ``create --server`` writes the server's private and public key."""
    return out_dir / "server.key", out_dir / "server.pub"


def paillier_key_paths(out_dir: Path) -> tuple[Path, Path]:
    """Where ``create --paillier`` writes the federation's private and public Paillier key."""
    return out_dir / "paillier.key.json", out_dir / "paillier.pub.json"


def prepare(args: argparse.Namespace) -> Callable[[], None]:
    """Read and check everything the command needs; the returned step does the writing."""
    if args.command == "list":
        node_ids = KeyRegistry.load(args.registry).node_ids()

        def show() -> None:
            sys.stdout.write("\n".join(node_ids) + "\n")

        return show
    if not args.node_ids and not args.server and not args.paillier:
        raise ValueError("name the nodes to create keys for, or --server for the server's key pair, or --paillier")
    paillier_paths = paillier_key_paths(args.out_dir)
    if args.paillier and paillier_paths[0].exists() and not args.rotate:
        raise ValueError(f"{paillier_paths[0]} exists already (use --rotate to replace it; the server, the nodes "
                         "and the decryptor then need the new files)")
    if args.paillier and not 1024 <= args.paillier_bits <= 8192:
        raise ValueError(f"--paillier-bits {args.paillier_bits}: must be in 1024..8192")
    keys = planned_keys(args.registry, args.node_ids, rotate=args.rotate) if args.node_ids else {}
    server_paths = server_key_paths(args.out_dir)
    if args.server and server_paths[0].exists() and not args.rotate:
        raise ValueError(f"{server_paths[0]} exists already (use --rotate to replace the server key; nodes and "
                         "auditors then need the new server.pub)")

    def create() -> None:
        if args.paillier:
            private = PaillierPrivate.generate(args.paillier_bits)
            private.save(*paillier_paths)
            logger.info("wrote %s and %s (Paillier key %s, %d bits)", *paillier_paths, private.public.key_id,
                        private.public.key_bits)
        if args.server:
            signer = ServerSigner.generate()
            signer.save(*server_paths)
            logger.info("wrote %s and %s (server key %s)", *server_paths, signer.key_id)
        if args.node_ids:
            for path in write_keys(args.registry, args.out_dir, args.node_ids, keys):
                logger.info("wrote %s", path)
            logger.info("registry %s now lists: %s", args.registry,
                        ", ".join(KeyRegistry.load(args.registry).node_ids()))

    return create


def main(argv: list[str] | None = None) -> int:
    # fl-keys has always answered 2 for every failure (a registry or key folder it cannot read or write included).
    return command_main(build_parser(), argv, prepare=prepare, run=lambda step: step(),
                        usage_errors=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
