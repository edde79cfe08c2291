"""Sharding is a deterministic partition of the devices."""
import pytest

from harness.runner import shard_devices


def test_shards_partition_the_devices():
    devices = [f"android:d{i}" for i in range(7)] + ["host"]
    shards = [shard_devices(devices, f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(devices)  # every device in exactly one shard
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    assert shard_devices(list(reversed(devices)), "2/3") == shards[1]  # independent of discovery order
    assert shard_devices(devices, None) == devices


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "1/0", "1-3"])
def test_bad_shard(bad):
    with pytest.raises(ValueError, match="expected I/N"):
        shard_devices(["host"], bad)


def test_farm_aliases_and_pools():
    from harness.devices.base import UnknownDeviceError, expand_device_ids

    farm = {"aliases": {"s23": "android:R5CT", "iphone": "ios:0001"},
            "pools": {"flagship": ["s23", "iphone", "android:X"]}}
    assert expand_device_ids(["pool:flagship", "s23", "host"], farm) == ["android:R5CT", "ios:0001", "android:X",
                                                                         "host"]
    with pytest.raises(UnknownDeviceError, match="unknown device pool 'mid'; pools in the farm file: flagship"):
        expand_device_ids(["pool:mid"], farm)
    assert expand_device_ids(["host"], None) == ["host"]


def test_one_export_failure_mapping_for_every_device_kind():
    """Android and iOS map a failed export the same way (they disagreed: a reference mismatch was
    `reference_mismatch` on Android and `export` on iOS)."""
    from harness.devices.base import export_failure
    from harness.export import ExportError

    check = export_failure(ExportError("rel. error 0.3 > 0.05", variant="v", kind="check", detail="max |d| 0.3"),
                           "variant 'v'", "Core ML")
    assert (check.kind, check.detail) == ("reference_mismatch", "max |d| 0.3")
    assert "exporting variant 'v' to Core ML failed: ExportError: rel. error 0.3" in check.message
    assert export_failure(ExportError("bad flag", kind="input"), "v", ".tflite").kind == "input"
    try:
        raise RuntimeError("converter crashed")
    except RuntimeError as exc:
        crash = export_failure(exc, "v", ".tflite")
    assert crash.kind == "export" and "converter crashed" in crash.detail  # the traceback as detail


def test_memoized_artifact_reuses_a_file_and_remembers_a_failure(tmp_path):
    """Android's and iOS's artifact memo (devices/base.memoized_artifact): one resolve per key while the file
    exists; a failed resolve is raised again without resolving anew."""
    from harness.devices.base import Artifact, JobFailure, memoized_artifact

    memo: dict = {}
    calls = []
    f = tmp_path / "m.tflite"
    f.write_bytes(b"x")

    def resolve():
        calls.append(1)
        return Artifact(f, "0" * 64, 1, "graph")

    assert memoized_artifact(memo, "k", resolve) is memoized_artifact(memo, "k", resolve) and len(calls) == 1
    f.unlink()  # gone from the host: resolved again
    memoized_artifact(memo, "k", lambda: (calls.append(1), Artifact(tmp_path, "1" * 64, 1, "graph"))[1])
    assert len(calls) == 2

    def fail():
        calls.append(1)
        raise JobFailure("export", "converter crashed")

    for _ in range(2):
        with pytest.raises(JobFailure, match="converter crashed"):
            memoized_artifact(memo, "bad", fail)
    assert len(calls) == 3  # the failure was resolved once
