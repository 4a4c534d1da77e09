"""``threshold-fl init-party`` and ``threshold-fl manifest``: set up a federation by hand.

Each party creates its own identity on its own machine and shares only the public file::

    threshold-fl init-party alice --dir parties/alice      # parties/alice/identity.pub.json

One person then assembles the manifest from the public files and sends it to everyone;
each party checks the printed fingerprint out of band before running::

    threshold-fl manifest --session lab-2026-11 --aggregator parties/server \\
        --client parties/alice --client parties/bob --client parties/carol \\
        --model cnn --mode threshold --rounds 5 --out manifest.json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from protocols import LocalPrivacy, Manifest, MaskPolicy, Mode, ModelSpec, Timeouts, make_manifest
from threshold_fl._checks import add_mask_options, add_model_option, bounded, selective_warning
from threshold_fl.errors import ManifestError, ThresholdFLError
from threshold_fl.identity import PUBLIC_FILENAME, SECRET_FILENAME, Identity, PublicIdentity

__all__ = ["init_party_main", "manifest_main", "read_public_identity"]

_MAX_PUBLIC_BYTES = 64 * 1024


def _fail(command: str, error: Exception) -> int:
    print(f"threshold-fl {command}: error: {error}", file=sys.stderr)
    return 1


def init_party_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="threshold-fl init-party",
        description="Create a party's identity keys (Ed25519 signing, X25519 agreement).")
    parser.add_argument("party", help="party id: letters, digits, '.', '_' or '-'")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write identity.key (0600) and identity.pub.json "
                             "(default: parties/PARTY)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing identity (its old key is lost)")
    args = parser.parse_args(argv)
    directory = args.dir if args.dir is not None else Path("parties") / args.party
    if (directory / SECRET_FILENAME).exists() and not args.force:
        return _fail("init-party", ThresholdFLError(
            f"{directory / SECRET_FILENAME} already exists; use --force to replace it "
            "(the old key is lost) or choose another --dir"))
    try:
        identity = Identity.generate(args.party)
        identity.save(directory, overwrite=args.force)
    except (ThresholdFLError, OSError) as error:
        return _fail("init-party", error)
    print(f"created {args.party}: {directory / SECRET_FILENAME} (secret, keep it here)")
    print(f"public file to share: {directory / PUBLIC_FILENAME}")
    print(f"fingerprint: {identity.public.fingerprint()}")
    return 0


def read_public_identity(path: Path) -> PublicIdentity:
    """A party's public identity from its directory or its ``identity.pub.json``."""
    file = path / PUBLIC_FILENAME if path.is_dir() else path
    try:
        if file.stat().st_size > _MAX_PUBLIC_BYTES:
            raise ThresholdFLError(f"{file} is larger than {_MAX_PUBLIC_BYTES} bytes")
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ThresholdFLError(f"cannot read public identity {file}: {error}") from None
    except (ValueError, RecursionError) as error:
        raise ThresholdFLError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ThresholdFLError(f"{file} must hold a JSON object")
    try:
        return PublicIdentity.from_dict(data)
    except ThresholdFLError as error:
        raise ThresholdFLError(f"{file}: {error}") from None


def _manifest_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threshold-fl manifest", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", default=None,
                        help="session id, fresh for every run (default: random)")
    parser.add_argument("--aggregator", type=Path, required=True,
                        help="the aggregator's directory or identity.pub.json")
    parser.add_argument("--client", type=Path, action="append", required=True,
                        help="a client's directory or identity.pub.json (repeat)")
    parser.add_argument("--key-authority", type=Path, default=None,
                        help="single-key mode only: the key authority's public identity")
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="threshold")
    parser.add_argument("--threshold", type=bounded(int, 1), default=None,
                        help="t, clients needed to decrypt (default: majority)")
    parser.add_argument("--rounds", type=bounded(int, 1, 100_000), default=3)
    length = parser.add_mutually_exclusive_group(required=True)
    add_model_option(length, default=None,
                     what="the model the clients train (sets the length and the first and "
                          "last layers)")
    length.add_argument("--model-length", type=bounded(int, 1), default=None,
                        help="flat model length, for models of your own")
    parser.add_argument("--data-seed", type=bounded(int, 0, 2**31 - 1), default=None,
                        help="with --model: seeds the initial weights and the data split "
                             "(default 0)")
    add_mask_options(parser)
    parser.add_argument("--dp-scale", type=bounded(float, 1e-12), default=None, metavar="B",
                        help="local DP every client applies to its plaintext coordinates "
                             "(with --fraction below 1): Laplace scale b")
    parser.add_argument("--dp-clip", type=bounded(float, 1e-12), default=None, metavar="C",
                        help="with --dp-scale: clip each plaintext update coordinate to "
                             "[-C, C] (default 1.0)")
    for name, default in vars(Timeouts()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=bounded(float, 0.001, 604_800),
                            default=default, help=f"timeout in seconds (default {default})")
    parser.add_argument("--out", type=Path, default=Path("manifest.json"))
    return parser


def _build_manifest(args: argparse.Namespace) -> Manifest:
    if args.model is None and args.data_seed is not None:
        raise ManifestError("--data-seed goes with --model: a model of your own "
                            "(--model-length) brings its own data")
    model = None if args.model is None else ModelSpec(args.model, int(args.data_seed or 0))
    length = None if args.model_length is None else int(args.model_length)
    authority = None if args.key_authority is None else read_public_identity(args.key_authority)
    timeouts = Timeouts(**{name: getattr(args, name) for name in vars(Timeouts())})
    if args.dp_scale is None and args.dp_clip is not None:
        raise ManifestError("--dp-clip goes with --dp-scale (the Laplace scale b)")
    privacy = None if args.dp_scale is None else LocalPrivacy(
        args.dp_scale, 1.0 if args.dp_clip is None else args.dp_clip)
    return make_manifest(
        session=args.session or f"session-{secrets.token_hex(8)}",
        aggregator=read_public_identity(args.aggregator),
        clients=[read_public_identity(path) for path in args.client],
        key_authority=authority, model=model, model_length=length, mode=args.mode,
        threshold=args.threshold, rounds=int(args.rounds),
        mask=MaskPolicy(args.fraction, not args.no_first_last), timeouts=timeouts,
        privacy=privacy)


def _model_text(manifest: Manifest) -> str:
    size = f"{manifest.model_length:,} parameters"
    if manifest.model is None:
        return size
    return f"model {manifest.model.name} ({size}, data seed {manifest.model.data_seed})"


def manifest_main(argv: Sequence[str] | None = None) -> int:
    args = _manifest_parser().parse_args(argv)
    try:
        manifest = _build_manifest(args)
        manifest.save(args.out)
        warning = selective_warning(manifest.mask.fraction, manifest.mode.value)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)
    except (ThresholdFLError, OSError) as error:
        return _fail("manifest", error)
    print(f"wrote {args.out}: session {manifest.session}, {manifest.mode.value}, "
          f"{len(manifest.clients)} clients, t={manifest.threshold}, "
          f"{_model_text(manifest)}")
    if manifest.privacy is not None:
        print(f"local DP: Laplace b = {manifest.privacy.laplace_scale:g}, clip C = "
              f"{manifest.privacy.clip:g} on the plaintext coordinates, at every client")
    print(f"fingerprint: {manifest.fingerprint()}  (every party must see this same value)")
    return 0
