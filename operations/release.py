"""`edge-node release build | publish`: the operator's side of software updates (issue 16).

    edge-node release build --key ops.key --out release-0.2.0/ [--source .] [--wheelhouse DIR | --no-deps]
    edge-node release publish --release release-0.2.0/ --url https://updates.example/0.2.0 \\
        --broker URL --key ops.key --nodes 'trs-*' --stages 1,10%,100% --soak 600

builds the project's wheel and its dependency wheels (`pip wheel`: the exact files resolved
today are the lock; `--wheelhouse DIR` takes them from DIR alone, offline), and writes
`manifest.json`: the version, the buffer schema and each file's name, size and SHA-256, sealed
with the operator's key (edge_node.signing, as signed commands are). A node checks the
signature and every hash before it installs anything (edge_node.update).

Wheels are built for the platform this runs on: build a fleet's release on its platform (a Pi,
or `pip wheel --platform` into a wheelhouse) so that compiled dependencies (cryptography, cffi)
match the nodes'.

`publish` checks the release as a node will, then sends each targeted node a signed `update`
command through `edge-node remote`'s rollout (operations/remote.py): the same stages, soak,
stop at the first failure, retained commands for offline nodes, and report. The release
directory is served by any HTTP(S) server that honours Range requests (nginx, a CDN).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from edge_node import update
from edge_node.update import MANIFEST, UpdateRefused, check_manifest, schema_fingerprint, sha256_file


class ReleaseError(Exception):
    """A release that cannot be made; `str()` is the one-line reason."""


def _wheel_facts(wheel: Path) -> tuple[str, str]:
    """(version, buffer schema fingerprint) of an edge_node wheel, read from the wheel itself."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if metadata is None or "edge_node/store.py" not in names:
            raise ReleaseError(f"{wheel.name}: not an edge-node wheel (no METADATA or edge_node/store.py)")
        version = next(
            (
                line.split(":", 1)[1].strip()
                for line in archive.read(metadata).decode().splitlines()
                if line.startswith("Version:")
            ),
            None,
        )
        tree = ast.parse(archive.read("edge_node/store.py").decode())
    schema = next(
        (
            node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "SCHEMA" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ),
        None,
    )
    if version is None or schema is None:
        raise ReleaseError(f"{wheel.name}: no Version in METADATA or no SCHEMA in edge_node/store.py")
    return version, schema_fingerprint(schema)


def build(source: Path, out: Path, signer, *, wheelhouse: Path | None = None, no_deps: bool = False) -> dict:
    """Wheels into `out`, then the signed manifest; the manifest (unsealed)."""
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out}: not empty (a release directory holds one release)")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(out)]
    if no_deps:
        command.append("--no-deps")
    if wheelhouse is not None:
        command += ["--no-index", "--find-links", str(wheelhouse)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or "pip wheel failed").splitlines()[-1]
        raise ReleaseError(f"pip wheel {source}: {last[:300]}")
    wheels = sorted(out.glob("*.whl"))
    project = [w for w in wheels if w.name.startswith("edge_node-")]
    if len(project) != 1:
        raise ReleaseError(f"{source}: pip wheel made {len(project)} edge_node wheels (expected 1)")
    version, schema = _wheel_facts(project[0])
    manifest = {
        "format": 1,
        "name": "edge-node",
        "version": version,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "buffer_schema": schema,
        "files": [{"name": w.name, "size": w.stat().st_size, "sha256": sha256_file(w)} for w in wheels],
    }
    try:
        check_manifest(manifest)
    except UpdateRefused as err:
        raise ReleaseError(str(err)) from None
    (out / MANIFEST).write_text(json.dumps(signer.seal(manifest), indent=1) + "\n")
    return manifest


def register(sub) -> None:
    from edge_node.cli import HelpFormatter

    parser = sub.add_parser(
        "release", help="build a signed software release for the fleet", formatter_class=HelpFormatter
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build_ = actions.add_parser("build", help="wheels + a manifest signed with the operator key")
    build_.add_argument("--key", required=True, help="operator private key (edge-node keygen)")
    build_.add_argument("--out", required=True, help="directory for the release (new or empty)")
    build_.add_argument("--source", default=".", help="the project to build (default: .)")
    deps = build_.add_mutually_exclusive_group()
    deps.add_argument("--wheelhouse", help="take every wheel from this directory alone (offline)")
    deps.add_argument("--no-deps", action="store_true", help="the project's wheel alone (tests)")
    build_.set_defaults(func=cmd_build)
    from .remote import add_rollout_arguments

    publish = actions.add_parser(
        "publish",
        help="offer a release to the fleet in stages (signed update commands, as `edge-node remote`)",
        description="Each targeted node gets a signed `update` command naming the version and the URL "
        "where the release directory is served (any HTTP(S) server with Range requests); stages, soak, "
        "offline nodes and the report are those of `edge-node remote`. "
        "Exit 0 only when every node confirmed.",
    )
    publish.add_argument(
        "--release", required=True, metavar="DIR", help="the release (edge-node release build)"
    )
    publish.add_argument(
        "--url", required=True, metavar="URL", help="where DIR is served, e.g. https://.../0.2.0"
    )
    publish.add_argument("--rollback", action="store_true", help="allow nodes to go to this older version")
    add_rollout_arguments(publish)
    publish.set_defaults(func=cmd_publish, action="update")


def cmd_build(args: argparse.Namespace) -> int:
    from edge_node.signing import load_signer

    try:
        signer = load_signer(args.key)
    except (OSError, ValueError) as err:
        print(
            f"edge-node release: --key {args.key}: {getattr(err, 'strerror', None) or err}", file=sys.stderr
        )
        return 2
    try:
        manifest = build(
            Path(args.source),
            Path(args.out),
            signer,
            wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
            no_deps=args.no_deps,
        )
    except (ReleaseError, OSError) as err:
        print(f"edge-node release build: {err}", file=sys.stderr)
        return 1
    size = sum(f["size"] for f in manifest["files"])
    print(
        f"edge-node {manifest['version']}: {len(manifest['files'])} wheels, {size / 1e6:.1f} MB, "
        f"signed by {signer.public} -> {Path(args.out) / MANIFEST}"
    )
    return 0


def cmd_publish(args: argparse.Namespace, *, out=None, err=None) -> int:
    """Check the release as a node will (signed by --key, every file whole), then roll it out."""
    from edge_node.signing import load_signer

    from .remote import cmd_remote

    err = err or sys.stderr
    try:
        signer = load_signer(args.key)
        manifest = update.read_manifest(Path(args.release), [signer.public])
        update.verify_files(manifest, Path(args.release))
    except (OSError, ValueError) as problem:
        print(f"edge-node release publish: {getattr(problem, 'strerror', None) or problem}", file=err)
        return 2
    except update.UpdateRefused as problem:
        print(f"edge-node release publish: {args.release}: {problem}", file=err)
        return 2
    if not args.url.startswith(("https://", "http://")):
        print(f"edge-node release publish: --url must be http(s):// (got {args.url[:60]!r})", file=err)
        return 2
    args.update_args = {"version": manifest["version"], "url": args.url}
    if args.rollback:
        args.update_args["rollback"] = True
    return cmd_remote(args, out=out, err=err)
