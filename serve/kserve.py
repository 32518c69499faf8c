"""Write the KServe storage bundle of a trained run: what KServe's TorchServe runtime serves.

    python -m serve.kserve --run runs/latest --out deploy/kserve/bundle [--protocol v1|v2] [--overwrite]

    DIR/config/config.properties   serve/config.kserve.properties, with the envelope of --protocol
    DIR/model-store/cars.mar       the run's archive, as `make archive` builds it

Copy DIR to the storage that deploy/kserve/inferenceservice.yaml names in its storageUri (a PVC or
a bucket) and apply the manifest: docs/deploy.md. The directory is written whole or not at all, and
an existing DIR is replaced only if this command wrote it (or with --overwrite).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from core.files import write_dir_atomic
from serve.archive import build_archive
from serve.torchserve import MODEL

CONFIG = Path(__file__).with_name("config.kserve.properties")
MARKER = ".kserve-bundle"  # in a bundle this command wrote: a later run may replace it
# InferenceService protocolVersion -> TorchServe service_envelope (KServe sets the same from the manifest).
ENVELOPES = {"v1": "kserve", "v2": "kservev2"}


def bundle_config(protocol: str) -> str:
    """serve/config.kserve.properties with the service_envelope of `protocol` ("v1" or "v2")."""
    if protocol not in ENVELOPES:
        raise UsageError(f"--protocol must be one of {', '.join(ENVELOPES)}, got {protocol!r}")
    text, count = re.subn(
        r"^service_envelope=.*$", f"service_envelope={ENVELOPES[protocol]}", CONFIG.read_text(), flags=re.M
    )
    if count != 1:
        raise UsageError(f"{CONFIG} must set service_envelope exactly once")
    return text


def write_bundle(run: Path, out: Path, protocol: str = "v1", overwrite: bool = False) -> Path:
    """DIR/config/config.properties + DIR/model-store/cars.mar, swapped into place when complete."""
    config = bundle_config(protocol)

    def fill(tmp: str) -> None:
        (Path(tmp) / "config").mkdir()
        (Path(tmp) / "config" / "config.properties").write_text(config)
        with contextlib.redirect_stdout(io.StringIO()):  # it would name the temporary directory
            build_archive(run, Path(tmp) / "model-store", MODEL)

    write_dir_atomic(out, fill, marker=MARKER, overwrite=overwrite)
    archive = out / "model-store" / f"{MODEL}.mar"
    print(
        f"Wrote {out}: config/config.properties (envelope {ENVELOPES[protocol]}, protocolVersion {protocol}) "
        f"and model-store/{archive.name} ({archive.stat().st_size / 1e6:.1f} MB)"
    )
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="trained run directory (default: runs/latest)")
    parser.add_argument("--out", required=True, help="bundle directory to write, e.g. deploy/kserve/bundle")
    parser.add_argument(
        "--protocol",
        choices=sorted(ENVELOPES),
        default="v1",
        help="KServe protocolVersion of the InferenceService: v1 (default) or v2 (open inference protocol)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if this command did not write it")
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    write_bundle(Path(args.run), Path(args.out), args.protocol, args.overwrite)


def cli() -> int:
    """A console script's entry point, as serve.archive's."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
