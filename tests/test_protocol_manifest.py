"""The federation manifest (protocols.manifest): defaults, JSON round trips, fingerprints
and validation of untrusted input.  Threshold parameters run a noise estimate through
OpenFHE, so threshold manifests are built once per module and varied with replace()."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

import protocols.manifest as manifest_module
from protocols.manifest import (
    LocalPrivacy,
    Manifest,
    MaskPolicy,
    Mode,
    ModelSpec,
    Role,
    Timeouts,
    make_manifest,
)
from threshold_fl.crypto.context import threshold_params
from threshold_fl.crypto.params import CkksParams, DecryptionNoise
from threshold_fl.errors import ManifestError, ParameterError
from threshold_fl.identity import Identity, PublicIdentity

SEED = bytes(range(32))
N = 5


def _public(name: str) -> PublicIdentity:
    return Identity.from_seed(name, SEED).public


AGGREGATOR = _public("aggregator")
AUTHORITY = _public("authority")
CLIENTS = [_public(f"client-{index}") for index in range(1, N + 1)]
SHUFFLED = [CLIENTS[3], CLIENTS[0], CLIENTS[4], CLIENTS[2], CLIENTS[1]]
CHEAP = CkksParams()  # no noise estimate: for tests about anything but parameters


def _match(text: str) -> str:
    return re.escape(text)


@pytest.fixture(scope="module")
def threshold() -> Manifest:
    """The one threshold manifest with default (flooded) parameters."""
    return make_manifest(
        session="fl-session.1", aggregator=AGGREGATOR, clients=SHUFFLED, model_length=100,
        always_encrypt=[(0, 10), (90, 100)],
    )


@pytest.fixture(scope="module")
def plaintext() -> Manifest:
    return make_manifest(session="plain", aggregator=AGGREGATOR, clients=CLIENTS[:3],
                         model_length=10, mode=Mode.PLAINTEXT)


@pytest.fixture(scope="module")
def single_key() -> Manifest:
    return make_manifest(session="single", aggregator=AGGREGATOR, clients=CLIENTS[:2],
                         model_length=10, mode="single-key", key_authority=AUTHORITY)


# --------------------------------------------------------------------- defaults


def test_threshold_defaults(threshold: Manifest) -> None:
    assert threshold.mode is Mode.THRESHOLD
    assert threshold.threshold == N // 2 + 1 == 3
    assert threshold.rounds == 3
    assert threshold.key_authority is None
    assert threshold.mask == MaskPolicy() and threshold.timeouts == Timeouts()
    assert threshold.always_encrypt == ((0, 10), (90, 100))
    # make_manifest sorts the clients.
    assert threshold.client_ids == tuple(f"client-{index}" for index in range(1, N + 1))


def test_threshold_params_are_flooded_and_sized_for_n(threshold: Manifest) -> None:
    params = threshold.params
    assert params.decryption_noise is DecryptionNoise.FLOODING
    assert params.noise_estimate_bits is not None and params.noise_estimate_bits > 0
    reference = threshold_params(N)
    # The estimate is a random sample: everything else must be identical.
    assert params.with_changes(noise_estimate_bits=reference.noise_estimate_bits) == reference
    assert reference.noise_estimate_bits is not None
    assert abs(params.noise_estimate_bits - reference.noise_estimate_bits) < 1.5


@pytest.mark.parametrize(("count", "expected"), [(2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_default_threshold_is_the_smallest_majority(count: int, expected: int) -> None:
    clients = [_public(f"c{index}") for index in range(count)]
    manifest = make_manifest(session="s", aggregator=AGGREGATOR, clients=clients,
                             model_length=4, params=CHEAP)
    assert manifest.threshold == expected == count // 2 + 1
    assert manifest.params is CHEAP  # explicit params are kept as given


def test_plaintext_defaults(plaintext: Manifest) -> None:
    assert plaintext.mode is Mode.PLAINTEXT
    assert plaintext.threshold == 1
    assert plaintext.params == CkksParams()
    assert plaintext.params.decryption_noise is DecryptionNoise.FIXED
    assert plaintext.key_authority is None


def test_single_key_defaults(single_key: Manifest) -> None:
    assert single_key.mode is Mode.SINGLE_KEY  # given as a string
    assert single_key.threshold == 1
    assert single_key.params == CkksParams()
    assert single_key.key_authority == AUTHORITY


def test_unknown_mode() -> None:
    with pytest.raises(ManifestError, match=_match("unknown mode 'secret'; use one of")):
        make_manifest(session="s", aggregator=AGGREGATOR, clients=CLIENTS, model_length=4,
                      mode="secret")


def test_client_patience() -> None:
    assert Timeouts().client_patience_s == 2 * (60 + 600 + 2 * 120)
    assert Timeouts(1, 2, 3, 4).client_patience_s == 2 * (2 + 3 + 8)


# -------------------------------------------------------------- lookups


def test_role_of(threshold: Manifest, single_key: Manifest) -> None:
    assert threshold.role_of("aggregator") is Role.AGGREGATOR
    for client in CLIENTS:
        assert threshold.role_of(client.party_id) is Role.CLIENT
    assert single_key.role_of("authority") is Role.KEY_AUTHORITY
    assert single_key.role_of("client-1") is Role.CLIENT
    assert single_key.role_of("aggregator") is Role.AGGREGATOR


@pytest.mark.parametrize("party", ["nobody", "authority", "client-6", "", "Client-1"])
def test_role_of_unknown_party(threshold: Manifest, party: str) -> None:
    with pytest.raises(ManifestError, match=_match(
            f"party {party!r} is not in manifest 'fl-session.1'")):
        threshold.role_of(party)


def test_client_ids_and_directory(threshold: Manifest, single_key: Manifest) -> None:
    assert threshold.client_ids == tuple(client.party_id for client in CLIENTS)
    assert threshold.directory == {
        "aggregator": AGGREGATOR, **{client.party_id: client for client in CLIENTS}
    }
    assert single_key.client_ids == ("client-1", "client-2")
    assert single_key.directory == {
        "aggregator": AGGREGATOR, "client-1": CLIENTS[0], "client-2": CLIENTS[1],
        "authority": AUTHORITY,
    }
    assert single_key.parties == (AGGREGATOR, CLIENTS[0], CLIENTS[1], AUTHORITY)


# ------------------------------------------------------- JSON and fingerprints


def test_json_round_trip(threshold: Manifest, plaintext: Manifest, single_key: Manifest) -> None:
    for manifest in (threshold, plaintext, single_key):
        text = manifest.to_json()
        copy = Manifest.from_json(text)
        assert copy.fingerprint() == manifest.fingerprint()
        assert copy.to_dict() == manifest.to_dict()
        assert copy.to_json() == text
        assert copy.params == manifest.params
        assert copy.client_ids == manifest.client_ids
        assert copy.key_authority == manifest.key_authority
        assert copy.always_encrypt == manifest.always_encrypt


def test_save_and_load(threshold: Manifest, single_key: Manifest, tmp_path: Path) -> None:
    for manifest in (threshold, single_key):
        path = tmp_path / f"{manifest.session}.json"
        manifest.save(path)
        assert json.loads(path.read_text())["format"] == "threshold-fl-manifest"
        for location in (path, str(path)):
            loaded = Manifest.load(location)
            assert loaded.fingerprint() == manifest.fingerprint()
            assert loaded.directory == manifest.directory


def test_fingerprint_is_stable(threshold: Manifest) -> None:
    fingerprint = threshold.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert threshold.fingerprint() == fingerprint
    assert dataclasses.replace(threshold).fingerprint() == fingerprint


CHANGES: list[Any] = [
    pytest.param({"session": "other"}, id="session"),
    pytest.param({"rounds": 4}, id="rounds"),
    pytest.param({"model_length": 101}, id="model_length"),
    pytest.param({"threshold": 4}, id="threshold"),
    pytest.param({"always_encrypt": ((0, 10),)}, id="always_encrypt"),
    pytest.param({"always_encrypt": ((0, 10), (90, 99))}, id="always_encrypt-range"),
    pytest.param({"mask": MaskPolicy(fraction=0.2)}, id="mask-fraction"),
    pytest.param({"mask": MaskPolicy(first_and_last=False)}, id="mask-layers"),
    pytest.param({"timeouts": Timeouts(join_s=61)}, id="timeouts"),
    pytest.param({"params": CHEAP}, id="params"),
    pytest.param({"mode": Mode.PLAINTEXT}, id="mode"),
    pytest.param({"clients": tuple(CLIENTS[:4])}, id="clients"),
    pytest.param({"aggregator": _public("aggregator-2")}, id="aggregator"),
    pytest.param({"aggregator": Identity.from_seed("aggregator", b"\x01" * 32).public},
                 id="aggregator-key"),
    pytest.param({"mode": Mode.SINGLE_KEY, "key_authority": AUTHORITY}, id="authority"),
    pytest.param({"model": ModelSpec("mlp")}, id="model"),
    pytest.param({"model": ModelSpec("mlp", data_seed=1)}, id="model-seed"),
    pytest.param({"privacy": LocalPrivacy(1e-4, 0.01)}, id="privacy"),
    pytest.param({"privacy": LocalPrivacy(1e-4, 0.02)}, id="privacy-clip"),
]


@pytest.mark.parametrize("change", CHANGES)
def test_fingerprint_changes_with_any_setting(threshold: Manifest, change: dict[str, Any]) -> None:
    changed = dataclasses.replace(threshold, **change)
    assert changed.fingerprint() != threshold.fingerprint()
    # ... and it survives a JSON round trip.
    assert Manifest.from_json(changed.to_json()).fingerprint() == changed.fingerprint()


def test_params_fingerprint_covers_the_noise_estimate(threshold: Manifest) -> None:
    params = threshold.params
    assert params.noise_estimate_bits is not None
    tweaked = params.with_changes(noise_estimate_bits=params.noise_estimate_bits + 0.001)
    changed = dataclasses.replace(threshold, params=tweaked)
    assert changed.fingerprint() != threshold.fingerprint()


def test_all_changes_give_distinct_fingerprints(threshold: Manifest) -> None:
    fingerprints = {threshold.fingerprint()}
    for param in CHANGES:
        fingerprints.add(dataclasses.replace(threshold, **param.values[0]).fingerprint())
    assert len(fingerprints) == len(CHANGES) + 1


# ------------------------------------------------------------------ validation


def _replace_fails(manifest: Manifest, problem: str, **change: Any) -> None:
    with pytest.raises(ManifestError, match=_match(problem)):
        dataclasses.replace(manifest, **change)


INVALID: list[Any] = [
    # identities
    pytest.param({"aggregator": CLIENTS[0]}, "party ids must be unique across roles",
                 id="aggregator-is-client"),
    pytest.param({"clients": (CLIENTS[0], CLIENTS[0], *CLIENTS[1:])},
                 "party ids must be unique across roles", id="duplicate-client"),
    pytest.param({"mode": Mode.SINGLE_KEY, "key_authority": CLIENTS[2]},
                 "party ids must be unique across roles", id="authority-is-client"),
    pytest.param({"mode": Mode.SINGLE_KEY, "key_authority": AGGREGATOR},
                 "party ids must be unique across roles", id="authority-is-aggregator"),
    pytest.param({"clients": tuple(SHUFFLED)}, "clients must be listed sorted by party id",
                 id="unsorted"),
    pytest.param({"clients": tuple(reversed(CLIENTS))}, "clients must be listed sorted",
                 id="reversed"),
    pytest.param({"clients": ()}, "a federation needs 1 to 1000 clients", id="no-clients"),
    pytest.param({"session": "bad session"}, "session id 'bad session'", id="session"),
    pytest.param({"session": ""}, "session id ''", id="empty-session"),
    pytest.param({"session": "s" * 65}, "use 1-64 of [A-Za-z0-9_.-]", id="long-session"),
    # threshold
    pytest.param({"threshold": 2}, "threshold t=2 must satisfy N/2 < t <= N for N=5",
                 id="t-minority"),
    pytest.param({"threshold": 0}, "threshold t=0 must satisfy N/2 < t <= N", id="t-zero"),
    pytest.param({"threshold": 6}, "threshold t=6 must satisfy N/2 < t <= N for N=5",
                 id="t-above-n"),
    pytest.param({"threshold": 3.0}, "threshold must be an integer, got 3.0", id="t-float"),
    pytest.param({"threshold": True}, "threshold must be an integer, got True", id="t-bool"),
    pytest.param({"threshold": "3"}, "threshold must be an integer, got '3'", id="t-str"),
    pytest.param({"clients": (CLIENTS[0],), "threshold": 1},
                 "threshold mode needs at least 2 clients", id="one-client"),
    pytest.param({"mode": Mode.PLAINTEXT, "threshold": 0},
                 "min clients t=0 must be in 1..5 for N=5", id="plain-t-zero"),
    pytest.param({"mode": Mode.PLAINTEXT, "threshold": 6}, "min clients t=6 must be in 1..5",
                 id="plain-t-above-n"),
    # key authority
    pytest.param({"mode": Mode.SINGLE_KEY},
                 "a key authority is required in single-key mode and only there",
                 id="single-key-without-authority"),
    pytest.param({"key_authority": AUTHORITY},
                 "a key authority is required in single-key mode and only there",
                 id="authority-in-threshold-mode"),
    pytest.param({"mode": Mode.PLAINTEXT, "threshold": 1, "key_authority": AUTHORITY},
                 "a key authority is required in single-key mode", id="authority-in-plaintext"),
    # sizes
    pytest.param({"rounds": 0}, "rounds must be in 1..100000, got 0", id="rounds-0"),
    pytest.param({"rounds": 100_001}, "rounds must be in 1..100000", id="rounds-big"),
    pytest.param({"rounds": "3"}, "rounds must be in 1..100000, got '3'", id="rounds-str"),
    pytest.param({"model_length": 0}, "model_length must be in 1..250000000", id="length-0"),
    pytest.param({"model_length": 250_000_001}, "model_length must be in 1..", id="length-big"),
    pytest.param({"model_length": 1.5}, "model_length must be in 1..", id="length-float"),
    # always_encrypt
    pytest.param({"always_encrypt": ((90, 101),)}, "always_encrypt range [90, 101) is outside",
                 id="past-end"),
    pytest.param({"always_encrypt": ((-1, 5),)}, "always_encrypt range [-1, 5) is outside",
                 id="negative"),
    pytest.param({"always_encrypt": ((6, 5),)}, "always_encrypt range [6, 5) is outside",
                 id="reversed-range"),
    pytest.param({"always_encrypt": ((0, 2.5),)}, "always_encrypt range [0, 2.5) is outside",
                 id="float-range"),
    pytest.param({"always_encrypt": ((0, 1, 2),)}, "invalid manifest: too many values",
                 id="triple"),
]


@pytest.mark.parametrize(("change", "problem"), INVALID)
def test_invalid_settings(threshold: Manifest, change: dict[str, Any], problem: str) -> None:
    _replace_fails(threshold, problem, **change)


def test_boundaries_are_accepted(threshold: Manifest) -> None:
    assert dataclasses.replace(threshold, threshold=N).threshold == N
    assert dataclasses.replace(threshold, always_encrypt=((0, 0), (100, 100))).always_encrypt
    assert dataclasses.replace(threshold, rounds=100_000).rounds == 100_000
    even = tuple(CLIENTS[:4])
    with pytest.raises(ManifestError, match=_match("t=2 must satisfy N/2 < t <= N for N=4")):
        dataclasses.replace(threshold, clients=even, threshold=2)  # t == N/2 exactly
    assert dataclasses.replace(threshold, clients=even, threshold=3).threshold == 3


@pytest.mark.parametrize("name", ["rounds", "model_length"])
def test_boolean_counts_are_refused(threshold: Manifest, name: str) -> None:
    with pytest.raises(ManifestError, match=name):
        dataclasses.replace(threshold, **{name: True})


def test_make_manifest_rejects_duplicate_ids() -> None:
    with pytest.raises(ManifestError, match="party ids must be unique across roles"):
        make_manifest(session="s", aggregator=AGGREGATOR, clients=[CLIENTS[0], CLIENTS[0]],
                      model_length=4, params=CHEAP)
    with pytest.raises(ManifestError, match="party ids must be unique across roles"):
        make_manifest(session="s", aggregator=CLIENTS[1], clients=CLIENTS[:3],
                      model_length=4, params=CHEAP)


def test_make_manifest_threshold_mode_with_one_client() -> None:
    with pytest.raises(ManifestError, match="threshold mode needs at least 2 clients"):
        make_manifest(session="s", aggregator=AGGREGATOR, clients=CLIENTS[:1], model_length=4)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"fraction": 1.5}, "mask fraction must be in [0, 1], got 1.5"),
    ({"fraction": -0.1}, "mask fraction must be in [0, 1], got -0.1"),
    ({"fraction": math.nan}, "mask fraction must be in [0, 1], got nan"),
    ({"fraction": "0.1"}, "mask fraction must be a number, got '0.1'"),
    ({"fraction": True}, "mask fraction must be a number, got True"),
    ({"first_and_last": "yes"}, "mask first_and_last must be true or false"),
    ({"first_and_last": 1}, "mask first_and_last must be true or false"),
])
def test_invalid_mask_policy(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ManifestError, match=_match(problem)):
        MaskPolicy(**kwargs)


def test_mask_policy_bounds_are_accepted() -> None:
    assert MaskPolicy(fraction=0).fraction == 0
    assert MaskPolicy(fraction=1.0).fraction == 1.0


@pytest.mark.parametrize("name", ["join_s", "keys_s", "upload_s", "decrypt_s"])
@pytest.mark.parametrize(("value", "problem"), [
    (-1, "must be in (0, 604800] seconds, got -1"),
    (0, "must be in (0, 604800] seconds, got 0"),
    (-0.5, "must be in (0, 604800] seconds, got -0.5"),
    (math.nan, "must be in (0, 604800] seconds, got nan"),
    (math.inf, "must be in (0, 604800] seconds, got inf"),
    (-math.inf, "must be in (0, 604800] seconds, got -inf"),
    (7 * 86400 + 1, "must be in (0, 604800] seconds, got 604801"),
    ("60", "must be a number of seconds, got '60'"),
    (True, "must be a number of seconds, got True"),
    (None, "must be a number of seconds, got None"),
])
def test_invalid_timeouts(name: str, value: Any, problem: str) -> None:
    with pytest.raises(ManifestError, match=_match(f"timeout {name} {problem}")):
        Timeouts(**{name: value})


def test_timeout_bounds_are_accepted() -> None:
    timeouts = Timeouts(join_s=0.001, keys_s=7 * 86400, upload_s=1, decrypt_s=2.5)
    assert (timeouts.join_s, timeouts.keys_s) == (0.001, 7 * 86400)


# --------------------------------------------------------- untrusted JSON input


def _dict_fails(data: object, problem: str) -> None:
    with pytest.raises(ManifestError, match=_match(problem)):
        Manifest.from_dict(data)


def _edited(manifest: Manifest, **changes: Any) -> dict[str, Any]:
    data = manifest.to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(("changes", "problem"), [
    ({"format": "threshold-fl-identity"},
     "not a threshold-fl-manifest version 1 file (format='threshold-fl-identity', version=1)"),
    ({"format": None}, "not a threshold-fl-manifest version 1 file (format=None"),
    ({"version": 2}, "not a threshold-fl-manifest version 1 file (format='threshold-fl-manifest"
                     "', version=2)"),
    ({"version": "1"}, "version='1'"),
    ({"extra": 1}, "unknown manifest field(s): extra"),
    ({"b_extra": 1, "a_extra": 2}, "unknown manifest field(s): a_extra, b_extra"),
    ({"mode": "secret"}, "invalid manifest: 'secret' is not a valid Mode"),
    ({"threshold": 2}, "threshold t=2 must satisfy N/2 < t <= N for N=5"),
    ({"rounds": 0}, "rounds must be in 1..100000"),
    ({"model_length": 0}, "model_length must be in 1.."),
    ({"always_encrypt": [[0, 101]]}, "always_encrypt range [0, 101) is outside the model"),
    ({"always_encrypt": [[0, 1, 2]]}, "always_encrypt entries are [start, stop] pairs"),
    ({"always_encrypt": [5]}, "always_encrypt entries are [start, stop] pairs, got 5"),
    ({"always_encrypt": None}, "invalid manifest"),
    ({"mask": {"fraction": 1.5}}, "mask fraction must be in [0, 1], got 1.5"),
    ({"mask": {"fraction": 0.1, "colour": "red"}}, "invalid manifest"),
    ({"mask": [0.1]}, "invalid manifest"),
    ({"timeouts": {"keys_s": -1}}, "timeout keys_s must be in (0, 604800] seconds, got -1"),
    ({"timeouts": {"soon": 1}}, "invalid manifest"),
    ({"params": {"ring_dimension": 3}}, "invalid manifest: ring_dimension must be 0"),
    ({"params": {"colour": 1}}, "invalid manifest: unknown CKKS parameter(s): colour"),
    ({"params": "default"}, "CKKS parameters must be a mapping"),
    ({"aggregator": {"party_id": "x"}}, "invalid manifest: public identity"),
    ({"clients": "client-1"}, "invalid manifest"),
    ({"clients": []}, "a federation needs 1 to 1000 clients"),
    ({"key_authority": {}}, "invalid manifest: public identity"),
    ({"session": 5}, "session id 5"),
    ({"model": "mlp"}, "model must be an object with name and data_seed, got 'mlp'"),
    ({"model": {"name": "mlp", "layers": 3}}, "model must be an object with name and data_seed"),
    ({"model": {"name": "My Model"}}, "model name 'My Model': use 1-32 of [a-z0-9_-]"),
    ({"model": {"data_seed": 1}}, "model name None"),
    ({"model": {"name": "mlp", "data_seed": -1}}, "model data_seed must be in 0..2147483647"),
    ({"model": {"name": "mlp", "data_seed": True}}, "model data_seed must be in 0..2147483647"),
])
def test_invalid_manifest_data(
    threshold: Manifest, changes: dict[str, Any], problem: str
) -> None:
    _dict_fails(_edited(threshold, **changes), problem)


def test_a_manifest_without_a_model_writes_no_model_field(threshold: Manifest) -> None:
    # so manifests made before the field existed keep their fingerprints
    assert threshold.model is None and "model" not in threshold.to_dict()
    named = dataclasses.replace(threshold, model=ModelSpec("cnn", 3))
    assert named.to_dict()["model"] == {"name": "cnn", "data_seed": 3}
    assert Manifest.from_json(named.to_json()).model == ModelSpec("cnn", 3)
    data = named.to_dict()
    del data["model"]["data_seed"]
    assert Manifest.from_dict(data).model == ModelSpec("cnn", 0)


def test_make_manifest_reads_a_named_model() -> None:
    manifest = make_manifest(session="s", aggregator=AGGREGATOR, clients=CLIENTS,
                             model=ModelSpec("mlp", 5), params=CHEAP)
    assert manifest.model == ModelSpec("mlp", 5)
    assert manifest.model_length == 4_810  # 64*64+64 hidden, 64*10+10 output
    assert manifest.always_encrypt == ((0, 4_160), (4_160, 4_810))


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({}, "name the model (a ModelSpec) or give model_length, not both"),
    ({"model": ModelSpec("mlp"), "model_length": 4_810},
     "name the model (a ModelSpec) or give model_length, not both"),
    ({"model": ModelSpec("mlp"), "always_encrypt": [(0, 10)]},
     "always_encrypt comes from the named model"),
    ({"model": ModelSpec("resnet")}, "manifest model: unknown model 'resnet'; choose one of"),
])
def test_make_manifest_model_errors(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ManifestError, match=_match(problem)):
        make_manifest(session="s", aggregator=AGGREGATOR, clients=CLIENTS, params=CHEAP,
                      **kwargs)


def test_unsorted_clients_in_json(threshold: Manifest) -> None:
    data = threshold.to_dict()
    data["clients"] = list(reversed(data["clients"]))
    _dict_fails(data, "clients must be listed sorted by party id")


def test_tampered_client_key_in_json(threshold: Manifest) -> None:
    data = threshold.to_dict()
    data["clients"][0]["signing_public"] = "00" * 31
    _dict_fails(data, "field 'signing_public' must be 32 bytes in hex")


@pytest.mark.parametrize("missing", ["session", "mode", "aggregator", "clients", "threshold",
                                     "rounds", "params", "model_length"])
def test_missing_required_field(threshold: Manifest, missing: str) -> None:
    data = threshold.to_dict()
    del data[missing]
    _dict_fails(data, missing)


def test_optional_fields_have_defaults(threshold: Manifest) -> None:
    data = threshold.to_dict()
    for name in ("always_encrypt", "mask", "timeouts"):
        del data[name]
    loaded = Manifest.from_dict(data)
    assert loaded.always_encrypt == ()
    assert loaded.mask == MaskPolicy() and loaded.timeouts == Timeouts()


@pytest.mark.parametrize("data", [[], "manifest", 3, None, [["format", "x"]]])
def test_non_object_data(data: object) -> None:
    _dict_fails(data, f"a manifest must be a JSON object, got {type(data).__name__}")


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"x"', "str"),
                                            ("null", "NoneType")])
def test_non_object_json(text: str, kind: str) -> None:
    problem = f"a manifest must be a JSON object, got {kind}"
    with pytest.raises(ManifestError, match=_match(problem)):
        Manifest.from_json(text)


@pytest.mark.parametrize("text", ["", "{", "{'format': 1}", "nope", '{"a": 1,}'])
def test_invalid_json(text: str) -> None:
    with pytest.raises(ManifestError, match="manifest is not valid JSON"):
        Manifest.from_json(text)


def test_nan_timeout_in_json(threshold: Manifest) -> None:
    text = threshold.to_json().replace('"join_s": 60.0', '"join_s": NaN')
    assert "NaN" in text
    with pytest.raises(ManifestError, match=_match("timeout join_s must be in (0, 604800]")):
        Manifest.from_json(text)


def test_deeply_nested_json_is_refused() -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json("[" * 100_000)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ManifestError, match=_match(f"cannot read manifest {path}")):
        Manifest.load(path)


def test_directory_is_not_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        Manifest.load(tmp_path)


def test_huge_file_is_refused(
    threshold: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.json"
    threshold.save(path)
    assert Manifest.load(path).fingerprint() == threshold.fingerprint()
    monkeypatch.setattr(manifest_module, "_MAX_FILE_BYTES", 100)
    with pytest.raises(ManifestError, match=_match(f"{path} is larger than 100 bytes")):
        Manifest.load(path)


def test_invalid_json_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="manifest is not valid JSON"):
        Manifest.load(path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ManifestError):
        Manifest.load(path)


def test_manifest_error_is_a_parameter_error() -> None:
    # Callers may catch ParameterError (or ValueError) for any configuration problem.
    assert issubclass(ManifestError, ParameterError)
    assert issubclass(ManifestError, ValueError)



def test_local_privacy_round_trips_and_is_absent_by_default(threshold: Manifest) -> None:
    assert threshold.privacy is None and "privacy" not in threshold.to_dict()
    noised = dataclasses.replace(threshold, privacy=LocalPrivacy(1e-4, 0.01))
    assert noised.to_dict()["privacy"] == {"laplace_scale": 1e-4, "clip": 0.01}
    assert Manifest.from_json(noised.to_json()).privacy == LocalPrivacy(1e-4, 0.01)


@pytest.mark.parametrize(("privacy", "problem"), [
    ({"laplace_scale": 0, "clip": 0.01}, "privacy laplace_scale must be a finite number > 0"),
    ({"laplace_scale": 1e-4, "clip": math.inf}, "privacy clip must be a finite number > 0"),
    ({"laplace_scale": True, "clip": 0.01}, "privacy laplace_scale"),
    ({"laplace_scale": 1e-4}, "privacy must be"),
    ([1e-4, 0.01], "privacy must be"),
])
def test_invalid_local_privacy_is_refused(threshold: Manifest, privacy: object,
                                          problem: str) -> None:
    data = threshold.to_dict()
    data["privacy"] = privacy
    with pytest.raises(ManifestError, match=_match(problem)):
        Manifest.from_dict(data)
