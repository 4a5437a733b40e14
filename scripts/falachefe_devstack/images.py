"""Container images for the local node, made on this machine without a registry.

No registry can be reached here, so every base the project's Dockerfile and
the node need is made locally, then the Dockerfile itself is built with
buildah, exactly as ``docker build .`` would build it elsewhere:

- the Python base: Debian bookworm ``minbase`` with ``python3`` (3.11, the
  Dockerfile's Python), made by mmdebstrap and imported into buildah's store;
- the uv base: the uv binary that bootstrap already installed, alone in a
  scratch image (the Dockerfile copies ``/uv`` from it);
- the pod sandbox ("pause"): a static C program built with gcc;
- the project image: ``buildah bud`` of the unchanged Dockerfile, with its
  ``PYTHON_IMAGE`` and ``UV_IMAGE`` build arguments naming the local bases.
  The build reaches PyPI through this machine's TLS-intercepting proxy: the
  host's CA bundle (and a uv config file that makes uv trust it) is mounted
  into the build steps, never copied into a layer.

Everything lives in buildah's store under ``$FALACHEFE_DEV_CACHE/containers``.
The project image is tagged with a hash of its build context (what the
``.dockerignore`` allow-list lets in), so an unchanged tree reuses it and a
source change rebuilds only the last layers (about a minute); older tags are
pruned so the store stays bounded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .toolchain import REPO, cache_root, exclusive_lock, log

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: What python:3.11-slim-bookworm offers the Dockerfile: an interpreter, CA certificates, time zones.
BASE_PACKAGES = ("python3", "ca-certificates", "tzdata", "netbase")
UV_VERSION = "0.13.8"
PROJECT_REPOSITORY = "localhost/falachefe"
PAUSE_SOURCE = Path(__file__).with_name("node_files") / "pause.c"
#: Project images kept in the store (the newest: several worktrees may share
#: it); older ones are removed after each build. They share all but their
#: source layer.
KEEP_PROJECT_IMAGES = 6


class BuildError(RuntimeError):
    """A build step failed; the message names the step, the command and the end of its output."""


@dataclass(frozen=True)
class Step:
    name: str

    def run(self, argv: Sequence[str], *, cwd: Path | None = None, progress: str | None = None) -> str:
        """Run ``argv``; with ``progress`` (a regex), print every output line it matches. Returns the output."""
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        lines: list[str] = []
        for raw in proc.stdout:
            line = raw.rstrip()
            lines.append(line)
            if progress is not None and re.match(progress, line):
                log(f"{self.name}: {line[:160]} ({time.monotonic() - started:.0f}s)")
        if proc.wait() != 0:
            tail = "\n".join(lines[-30:])
            raise BuildError(
                f"{self.name} failed (exit {proc.returncode}) running:\n  {' '.join(argv)}\nlast output:\n{tail}"
            )
        return "\n".join(lines)


class Buildah:
    """buildah with the project's own image store."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root() / "containers"
        self.storage = ["--root", str(self.root / "storage"), "--runroot", str(self.root / "run")]

    def argv(self, *args: str) -> list[str]:
        return ["buildah", *self.storage, *args]

    def run(self, step: str, *args: str, progress: str | None = None, cwd: Path | None = None) -> str:
        return Step(step).run(self.argv(*args), progress=progress, cwd=cwd)

    def image_id(self, ref: str) -> str | None:
        result = subprocess.run(
            self.argv("images", "--noheading", "--no-trunc", "--format", "{{.ID}}", ref),
            capture_output=True,
            text=True,
            check=False,
        )
        ids = result.stdout.split()
        return ids[0] if result.returncode == 0 and ids else None

    def tags(self, repository: str) -> list[tuple[str, str]]:
        """(tag, created) of every image of ``repository``, newest first."""
        # ``buildah images <repository>`` wants a tag: list everything and pick the repository's.
        out = subprocess.run(
            self.argv("images", "--noheading", "--format", "{{.Name}}|{{.Tag}}|{{.CreatedAtRaw}}"),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [[cell.strip() for cell in line.split("|")] for line in out.splitlines() if line.count("|") == 2]
        found = [(tag, created) for name, tag, created in rows if name == repository]
        return sorted(found, key=lambda row: row[1], reverse=True)

    def from_scratch(self, step: str, ref: str, files: dict[str, Path], config: Sequence[str]) -> str:
        """A single-layer image of ``files`` (path in image -> host file), committed as ``ref``."""
        container = self.run(step, "from", "scratch").strip().splitlines()[-1]
        try:
            for target, source in files.items():
                self.run(step, "copy", "--chmod", "0755", container, str(source), target)
            if config:
                self.run(step, "config", *config, container)
            self.run(step, "commit", "--quiet", "--rm", container, ref)
        except BaseException:
            subprocess.run(self.argv("rm", container), capture_output=True, check=False)
            raise
        return ref


def _short_hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def _locked(name: str) -> contextlib.AbstractContextManager[None]:
    lock_dir = cache_root() / "containers"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(lock_dir / f".{name}.lock", f"the image build of {name}")


# -- bases -----------------------------------------------------------------------------


def ensure_python_base(buildah: Buildah) -> str:
    """Debian bookworm minbase with python3, the stand-in for python:3.11-slim-bookworm."""
    key = _short_hash(DEBIAN_SUITE.encode(), " ".join(BASE_PACKAGES).encode())
    ref = f"localhost/falachefe-base/python:3.11-{DEBIAN_SUITE}-{key}"
    if buildah.image_id(ref):
        return ref
    with _locked("python-base"):
        if buildah.image_id(ref):
            return ref
        log(f"making the Python base image {ref} with mmdebstrap (cold: 1-4 minutes)")
        with tempfile.TemporaryDirectory(prefix="falachefe-base-") as scratch:
            rootfs = Path(scratch) / "rootfs.tar"
            Step("mmdebstrap (the Python base)").run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    "--aptopt=Acquire::Check-Valid-Until false",
                    # No apt lists or caches in the image, as in the official slim images.
                    "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                    "--format=tar",
                    DEBIAN_SUITE,
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                progress="I: ",  # mmdebstrap's stages
            )
            step = "importing the Python base"
            container = buildah.run(step, "from", "scratch").strip().splitlines()[-1]
            buildah.run(step, "add", container, str(rootfs), "/")
            buildah.run(
                step,
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "python3",
                container,
            )
            buildah.run(step, "commit", "--quiet", "--rm", container, ref)
    return ref


def ensure_uv_base(buildah: Buildah) -> str:
    """The uv that bootstrap installed, as the Dockerfile's ``uv`` stage expects it: ``/uv``."""
    uv = cache_root() / f"uv-{UV_VERSION}" / "bin" / "uv"
    if not uv.exists():
        raise BuildError(f"{uv} is missing: run scripts/bootstrap.sh first")
    ref = f"localhost/falachefe-base/uv:{UV_VERSION}"
    if buildah.image_id(ref):
        return ref
    with _locked("uv-base"):
        if not buildah.image_id(ref):
            log(f"making {ref}")
            buildah.from_scratch("making the uv base", ref, {"/uv": uv}, [])
    return ref


def ensure_pause(buildah: Buildah) -> str:
    """The pod sandbox image: the static pause program in a scratch image."""
    source = PAUSE_SOURCE.read_bytes()
    ref = f"localhost/falachefe-base/pause:{_short_hash(source)}"
    if buildah.image_id(ref):
        return ref
    with _locked("pause"), tempfile.TemporaryDirectory(prefix="falachefe-pause-") as scratch:
        if buildah.image_id(ref):
            return ref
        binary = Path(scratch) / "pause"
        Step("compiling pause.c").run(["gcc", "-static", "-O2", "-s", "-o", str(binary), str(PAUSE_SOURCE)])
        buildah.from_scratch("making the pause image", ref, {"/pause": binary}, ["--entrypoint", '["/pause"]'])
    return ref


# -- the project image --------------------------------------------------------------------


def build_context_files(repo: Path = REPO) -> list[Path]:
    """The files ``docker build .`` sends: the .dockerignore allow-list (``!path``) minus its ``**/`` exclusions."""
    included: list[str] = []
    excluded: list[str] = []
    for raw in (repo / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line.startswith("!"):
            included.append(line[1:].rstrip("/"))
        elif line.startswith("**/"):
            excluded.append(line[3:])
    files: list[Path] = []
    for root in included:
        path = repo / root
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            parts = candidate.relative_to(repo).parts
            if not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in excluded):
                files.append(candidate)
    return files


def context_key(repo: Path = REPO) -> str:
    """A hash of everything the build reads: the Dockerfile and the context's paths and contents."""
    digest = hashlib.sha256()
    for path in [repo / "Dockerfile", repo / ".dockerignore", *build_context_files(repo)]:
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def ensure_project_image(buildah: Buildah | None = None, repo: Path = REPO, revision: str | None = None) -> str:
    """The image of this tree, built from its Dockerfile unless a build of the same context exists."""
    buildah = buildah or Buildah()
    ref = f"{PROJECT_REPOSITORY}:dev-{context_key(repo)}"
    if buildah.image_id(ref):
        return ref
    python_base, uv_base = ensure_python_base(buildah), ensure_uv_base(buildah)
    with _locked("project"):
        if buildah.image_id(ref):
            return ref
        log(f"building {ref} from the Dockerfile (cold: about 8 minutes; after a source change: about a minute)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="falachefe-build-") as scratch:
            uv_config = Path(scratch) / "uv.toml"
            # uv ships its own roots; this makes it read the system bundle mounted below.
            uv_config.write_text("native-tls = true\n")
            ca_bundle = _host_ca_bundle()
            buildah.run(
                f"building {ref}",
                "bud",
                "--runtime",
                "runc",
                "--pull=never",
                "--layers",
                "--network",
                "host",
                "--volume",
                f"{ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro",
                "--volume",
                f"{uv_config}:/etc/uv/uv.toml:ro",
                "--build-arg",
                f"PYTHON_IMAGE={python_base}",
                "--build-arg",
                f"UV_IMAGE={uv_base}",
                "--build-arg",
                f"REVISION={revision or _git_revision(repo)}",
                "--tag",
                ref,
                ".",
                cwd=repo,
                progress=r"(\[\d+/\d+\] )?STEP \d+/\d+",
            )
        log(f"built {ref} in {time.monotonic() - started:.0f}s")
        prune_images(buildah, PROJECT_REPOSITORY, keep=KEEP_PROJECT_IMAGES)
    return ref


def prune_images(buildah: Buildah, repository: str, keep: int) -> None:
    """Remove all but the ``keep`` newest images of ``repository``, then layers nothing uses any more."""
    for tag, _ in buildah.tags(repository)[keep:]:
        subprocess.run(buildah.argv("rmi", f"{repository}:{tag}"), capture_output=True, check=False)
    subprocess.run(buildah.argv("rmi", "--prune"), capture_output=True, check=False)


def image_size(buildah: Buildah, ref: str) -> str:
    """The image's size (its layers, uncompressed) as buildah reports it, e.g. ``1.25 GB``."""
    out = subprocess.run(
        buildah.argv("images", "--noheading", "--format", "{{.Size}}", ref),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip()


def export_archive(buildah: Buildah, ref: str, directory: Path) -> Path:
    """``ref`` as a docker-archive tarball (what ``ctr images import`` reads), written once per image id."""
    image_id = buildah.image_id(ref)
    if image_id is None:
        raise BuildError(f"no image {ref} in {buildah.root}")
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / f"{image_id.removeprefix('sha256:')[:16]}.tar"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        buildah.run(f"exporting {ref}", "push", "--quiet", ref, f"docker-archive:{partial}:{ref}")
        partial.rename(archive)
    return archive


def _host_ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BuildError("no CA bundle on this machine (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)")


def _git_revision(repo: Path) -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    result = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


#: Images made from the project image by adding files (tests' "next version" of it).
DERIVED_REPOSITORY = "localhost/falachefe-derived"


def derived_image(base: str, files: dict[str, str], name: str) -> tuple[str, Path]:
    """``base`` with ``files`` (path in the image: text) added, and its archive: another version of the image.

    What a release with one more source file looks like (a new migration),
    in seconds rather than a rebuild: one layer on top of ``base``. Tagged
    by its content; the newest ``KEEP_PROJECT_IMAGES`` derived images are kept.
    """
    buildah = Buildah()
    base_id = buildah.image_id(base)
    if base_id is None:
        raise BuildError(f"no image {base} in {buildah.root}")
    key = _short_hash(base_id.encode(), *(f"{path}\0{text}".encode() for path, text in sorted(files.items())))
    ref = f"{DERIVED_REPOSITORY}:{name}-{key}"
    with _locked("derived"):
        if buildah.image_id(ref) is None:
            container = buildah.run(f"starting from {base}", "from", "--pull=never", "--quiet", base).strip()
            try:
                with tempfile.TemporaryDirectory() as scratch:
                    for index, (path, text) in enumerate(sorted(files.items())):
                        source = Path(scratch) / str(index)
                        source.write_text(text)
                        source.chmod(0o644)
                        buildah.run(f"adding {path}", "copy", "--chown", "0:0", container, str(source), path)
                buildah.run(f"committing {ref}", "commit", "--quiet", container, ref)
            finally:
                subprocess.run(buildah.argv("rm", container), capture_output=True, check=False)
            prune_images(buildah, DERIVED_REPOSITORY, keep=KEEP_PROJECT_IMAGES)
        directory = buildah.root / "archives-derived"
        archive = export_archive(buildah, ref, directory)
        archive.touch()
        for stale in sorted(directory.glob("*.tar"), key=lambda path: path.stat().st_mtime)[:-KEEP_PROJECT_IMAGES]:
            stale.unlink(missing_ok=True)
        return ref, archive


#: Images of earlier commits (a previous release, for upgrade tests), kept by commit: never pruned.
RELEASE_REPOSITORY = "localhost/falachefe-release"


def release_image(commit: str) -> tuple[str, Path]:
    """The project image of an earlier ``commit`` of this repository, and its archive: a previous release.

    Built from ``git archive`` of that commit with that commit's Dockerfile,
    as its release was, then tagged by commit; a machine that built it once
    (a warm CI runner) reuses it. The layers before the source are shared
    with this tree's image when the lock files did not change.
    """
    buildah = Buildah()
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    ref = f"{RELEASE_REPOSITORY}:{full[:12]}"
    with _locked(f"release-{full[:12]}"):
        if buildah.image_id(ref) is None:
            with tempfile.TemporaryDirectory(prefix="falachefe-release-", dir=cache_root()) as scratch:
                tree = Path(scratch)
                archive = subprocess.run(["git", "archive", full], cwd=REPO, capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
                built = ensure_project_image(buildah, repo=tree, revision=full[:7])
                buildah.run(f"tagging {ref}", "tag", built, ref)
        return ref, export_archive(buildah, ref, buildah.root / "archives-release")


@dataclass(frozen=True)
class NodeImages:
    """What a node needs imported: the sandbox image and the project image, as archives."""

    sandbox: str
    project: str
    archives: tuple[Path, ...]


def ensure_node_images() -> NodeImages:
    """Build (or reuse) the pause and project images and their archives; drop archives of older builds."""
    buildah = Buildah()
    sandbox, project = ensure_pause(buildah), ensure_project_image(buildah)
    directory = buildah.root / "archives"
    archives = tuple(export_archive(buildah, ref, directory) for ref in (sandbox, project))
    for stale in directory.glob("*.tar"):
        if stale not in archives:
            stale.unlink(missing_ok=True)
    return NodeImages(sandbox=sandbox, project=project, archives=archives)


def main() -> int:
    """Build (or find) the node's images and print what they are: ``python -m falachefe_devstack.images``."""
    built = ensure_node_images()
    buildah = Buildah()
    for ref in (built.sandbox, built.project):
        print(f"{ref}: {image_size(buildah, ref)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
