#!/usr/bin/env python3
"""Write a mosquitto configuration for a threshold-fl federation.

Creates, in ``--out``: ``mosquitto.conf``, ``tfl.acl`` (each party confined to its own
topics) and ``tfl.passwd`` (hashed with ``mosquitto_passwd``).  Passwords come from
``--credentials FILE`` (lines ``party:password``) or are generated and written to
``credentials.txt`` (mode 0600) for you to hand to each party.

    python deploy/mosquitto/make_config.py --out ./broker --parties aggregator,alice,bob
    mosquitto -c ./broker/mosquitto.conf
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

try:
    from transports.broker import write_deploy_config
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from transports.broker import write_deploy_config


def read_credentials(path: Path) -> dict[str, str]:
    """``party:password`` per line; blank lines and ``#`` comments are skipped."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        party, sep, password = line.partition(":")
        if not sep or not password:
            raise SystemExit(f"{path}:{number}: expected 'party:password'")
        out[party] = password
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--parties", help="comma-separated party ids (passwords generated)")
    parser.add_argument("--credentials", type=Path, help="file of 'party:password' lines")
    parser.add_argument("--session", help="confine the ACL to this session (default: any)")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--host", default="0.0.0.0", help="listener address")
    args = parser.parse_args(argv)
    if (args.parties is None) == (args.credentials is None):
        parser.error("give exactly one of --parties and --credentials")
    if args.credentials is not None:
        credentials = read_credentials(args.credentials)
    else:
        parties = [p.strip() for p in args.parties.split(",") if p.strip()]
        credentials = {p: secrets.token_urlsafe(24) for p in parties}
        args.out.mkdir(parents=True, exist_ok=True)
        secret = args.out / "credentials.txt"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(f"{p}:{pw}\n" for p, pw in credentials.items())
        print(f"generated passwords in {secret} (mode 0600): give each party its line")
    conf = write_deploy_config(args.out, credentials, session=args.session,
                               port=args.port, host=args.host)
    print(f"wrote {conf}, {conf.parent / 'tfl.acl'}, {conf.parent / 'tfl.passwd'}")
    print(f"start the broker with: mosquitto -c {conf}")
    print(f"(started as root, mosquitto switches to user 'mosquitto', which must be able to "
          f"read these files: chown -R mosquitto: {conf.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
