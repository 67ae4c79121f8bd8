"""Checks that `import PIL` resolves to the pillow-simd build, not plain pillow."""
import importlib.metadata as metadata
import pathlib
import sys

import PIL
from PIL import features

# Formats the shard builder and the loader decode; each needs its library at build time.
REQUIRED_CODECS = ("jpg", "zlib", "webp")


def main() -> int:
    try:
        simd_version = metadata.version("pillow-simd")
    except metadata.PackageNotFoundError:
        simd_version = None
    imported_from = pathlib.Path(PIL.__file__).resolve()
    owned = False
    if simd_version is not None:
        dist = metadata.distribution("pillow-simd")
        owned = any(pathlib.Path(dist.locate_file(f)).resolve() == imported_from for f in dist.files or [])
    if not owned or PIL.__version__ != simd_version:
        print(
            f"[setup] PIL {PIL.__version__} imported from {imported_from} is NOT the pillow-simd build "
            f"(pillow-simd installed: {simd_version}); reinstall with scripts/setup_venv.sh",
            file=sys.stderr,
        )
        return 1
    missing = [codec for codec in REQUIRED_CODECS if not features.check(codec)]
    if missing:
        print(f"[setup] pillow-simd {simd_version} was built without {', '.join(missing)} support; install the "
              f"headers in system-packages.txt and rerun scripts/setup_venv.sh", file=sys.stderr)
        return 1
    print(f"[setup] PIL {PIL.__version__} is the pillow-simd build ({imported_from.parent}), with {', '.join(REQUIRED_CODECS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
