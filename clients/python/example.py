#!/usr/bin/python3
"""A runnable example of the Python client: put, get and list against a cairn cluster.

    npm start                                   # in the repository: a local 3-node cluster
    /usr/bin/python3 clients/python/example.py --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
    # against nodes with TLS (docs/security.md): --cacert ca.pem [--cert alice.pem --key alice.key]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cairn_client import CairnError, Client, tls_credentials  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
                        help="client addresses HOST:PORT,... (default: the local cluster of `npm start`)")
    parser.add_argument("--prefix", default="example/", help="the keys written go under this prefix")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt at one endpoint")
    parser.add_argument("--cacert", help="TLS: PEM CA bundle that verifies the nodes' certificates")
    parser.add_argument("--cert", help="TLS: a client certificate (PEM), for nodes started with --client-ca-file")
    parser.add_argument("--key", help="TLS: the client certificate's private key (PEM)")
    args = parser.parse_args()
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    credentials = tls_credentials(args.cacert, args.cert, args.key) if args.cacert or args.cert else None

    try:
        with Client(args.endpoints.split(","), timeout=args.timeout, credentials=credentials) as client:
            for name, value in (("color", "blue"), ("size", "large"), ("shape", "round")):
                put = client.put(args.prefix + name, value)
                print(f"put {args.prefix}{name} = {value}  (revision {put.header.revision}, answered by node {put.header.member_id})")

            got = client.get(args.prefix + "color")
            print(f"get {args.prefix}color -> {got.kv.value.decode()}  (version {got.kv.version})")
            missing = client.get(args.prefix + "no-such-key")
            print(f"get {args.prefix}no-such-key -> {'found' if missing.HasField('kv') else 'not found'}")

            page = client.list(args.prefix, limit=2)
            for kv in page.kvs:
                print(f"list {kv.key.decode()}\t{kv.value.decode()}")
            if page.more:
                print("(more keys follow; raise the limit)")
    except CairnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
