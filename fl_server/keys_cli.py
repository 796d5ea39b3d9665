"""``fl-keys``: issue the per-node secret keys the server's registry and each node hold."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.config import add_flag, add_logging_options, setup_logging
from common.wire.integrity import KeyRegistry, new_key, write_secret
from common.wire.protocol import ProtocolError, check_node_id

logger = logging.getLogger("fl_keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-keys",
        description="Create node keys: adds each node to the server's registry (JSON, give it to fl-server "
        "--node-keys) and writes <out-dir>/<node>.key (give it to that node's fl-node --key-file). "
        "Both files are created readable by their owner only.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="issue keys for new nodes (or --rotate existing ones)")
    create.add_argument("node_ids", nargs="+", help="node ids (letters, digits, . _ -)")
    create.add_argument("--registry", type=Path, default=Path("keys/registry.json"), help="server-side registry")
    create.add_argument("--out-dir", type=Path, default=Path("keys"), help="where <node>.key files go")
    add_flag(create, "--rotate", help="replace the key of a node that already has one", env="FL_KEYS_ROTATE")
    show = sub.add_parser("list", help="list the node ids in a registry (never the keys)")
    show.add_argument("--registry", type=Path, default=Path("keys/registry.json"))
    add_logging_options(parser)
    return parser


def create_keys(registry_path: Path, out_dir: Path, node_ids: list[str], *, rotate: bool = False) -> list[Path]:
    """Add ``node_ids`` to the registry and write their key files; returns the key file paths."""
    for node_id in node_ids:
        check_node_id(node_id)
    keys: dict[str, bytes] = {}
    if registry_path.exists():
        registry = KeyRegistry.load(registry_path)
        keys = {n: registry.key_of(n) or b"" for n in registry.node_ids()}
    clash = sorted(set(node_ids) & set(keys))
    if clash and not rotate:
        raise ValueError(f"node(s) {', '.join(clash)} already have keys in {registry_path} (use --rotate)")
    written = []
    for node_id in node_ids:
        keys[node_id] = new_key()
        path = out_dir / f"{node_id}.key"
        write_secret(path, keys[node_id].hex() + "\n")
        written.append(path)
    write_secret(registry_path, json.dumps(KeyRegistry(keys).to_wire(), indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.quiet)
    try:
        if args.command == "list":
            sys.stdout.write("\n".join(KeyRegistry.load(args.registry).node_ids()) + "\n")
            return 0
        for path in create_keys(args.registry, args.out_dir, args.node_ids, rotate=args.rotate):
            logger.info("wrote %s", path)
        logger.info("registry %s now lists: %s", args.registry, ", ".join(KeyRegistry.load(args.registry).node_ids()))
    except (ValueError, ProtocolError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
