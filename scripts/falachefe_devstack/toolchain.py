"""Go-built binaries of the local stack, cached outside the repo and built once.

etcd and the Kubernetes commands (kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy) come from the wrapper module in
``scripts/kubebin`` (``go build``); Helm and metrics-server from
``go install``. Each lands in ``$FALACHEFE_DEV_CACHE/bin/<name>-<version>-<key>/``, where the key
hashes what the build depends on, so a changed go.sum rebuilds and an
unchanged one reuses. A cold build takes minutes: progress is printed as
``[built/total] package`` lines.

Run ``python -m falachefe_devstack.toolchain`` to build everything ahead of
time, or ``... regen`` to regenerate the wrapper go.mod for a new version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KUBEBIN_MODULE = REPO / "scripts" / "kubebin"

KUBERNETES_VERSION = "v1.32.9"
ETCD_VERSION = "v3.5.16"
HELM_VERSION = "v3.19.5"
METRICS_SERVER_VERSION = "v0.8.0"
#: The Go module's version of Prometheus 3.16.0 (promtool).
PROMETHEUS_VERSION = "v0.316.0"

KUBERNETES_PACKAGES = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}

#: The tooling's own environment variables carry this prefix, so they can
#: never be mistaken for the runtime's ``FALACHEFE_*`` settings.
ENV_PREFIX = "FALACHEFE_DEV_"


def cache_root() -> Path:
    """Where slow-to-build things are kept: ``$FALACHEFE_DEV_CACHE``, else ~/.cache/falachefe."""
    return Path(os.environ.get(f"{ENV_PREFIX}CACHE", Path.home() / ".cache" / "falachefe"))


def log(message: str) -> None:
    print(f"[toolchain] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Toolchain:
    """Paths of the built binaries."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    metrics_server: Path
    helm: Path


def ensure_all() -> Toolchain:
    kubernetes = ensure_kubernetes()
    return Toolchain(
        etcd=kubernetes / "etcd",
        kube_apiserver=kubernetes / "kube-apiserver",
        kube_controller_manager=kubernetes / "kube-controller-manager",
        kube_scheduler=kubernetes / "kube-scheduler",
        kubelet=kubernetes / "kubelet",
        kube_proxy=kubernetes / "kube-proxy",
        metrics_server=ensure_metrics_server() / "metrics-server",
        helm=ensure_helm() / "helm",
    )


def ensure_kubernetes() -> Path:
    """Build etcd and the Kubernetes commands (control plane and node) if not cached."""
    go_mod = (KUBEBIN_MODULE / "go.mod").read_bytes()
    go_sum = (KUBEBIN_MODULE / "go.sum").read_bytes()
    key = hashlib.sha256(go_mod + go_sum + _go_version().encode()).hexdigest()[:12]
    target = cache_root() / "bin" / f"kubernetes-{KUBERNETES_VERSION}-{key}"
    names = list(KUBERNETES_PACKAGES)
    with _built_once(target, names) as build_dir:
        if build_dir is not None:
            minor = KUBERNETES_VERSION.lstrip("v").split(".")[1]
            ldflags = " ".join(
                [
                    "-s -w",
                    f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
                    "-X k8s.io/component-base/version.gitMajor=1",
                    f"-X k8s.io/component-base/version.gitMinor={minor}",
                    "-X k8s.io/component-base/version.gitTreeState=clean",
                    "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z",
                ]
            )
            packages = list(KUBERNETES_PACKAGES.values())
            log(f"building Kubernetes {KUBERNETES_VERSION} (etcd {ETCD_VERSION}) into {target}")
            _go_with_progress(
                ["build", "-trimpath", "-ldflags", ldflags, "-o", str(build_dir) + "/", *packages],
                packages=packages,
                cwd=KUBEBIN_MODULE,
            )
            # `go build` names a binary after its import path, minus the major version: "server".
            (build_dir / "server").rename(build_dir / "etcd")
    return target


def ensure_helm() -> Path:
    ldflags = (
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION} "
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )
    return _go_install("helm", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}", ldflags)


def ensure_metrics_server() -> Path:
    """metrics-server, the real one: it reads the kubelet's resource metrics and serves metrics.k8s.io."""
    ldflags = f"-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion={METRICS_SERVER_VERSION}"
    return _go_install(
        "metrics-server", f"sigs.k8s.io/metrics-server/cmd/metrics-server@{METRICS_SERVER_VERSION}", ldflags
    )


def _go_install(name: str, package: str, ldflags: str) -> Path:
    """``go install package@version`` into its own cache entry, keyed by the Go version."""
    version = package.rpartition("@")[2]
    key = hashlib.sha256(_go_version().encode()).hexdigest()[:12]
    target = cache_root() / "bin" / f"{name}-{version}-{key}"
    with _built_once(target, [name]) as build_dir:
        if build_dir is not None:
            log(f"installing {name} {version} into {target}")
            _go_with_progress(
                ["install", "-trimpath", "-ldflags", ldflags, package],
                packages=None,
                cwd=build_dir,
                env={"GOBIN": str(build_dir), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
            )
    return target


def ensure_promtool() -> Path:
    """promtool, to unit-test the chart's alerting rules (``promtool test rules``).

    ``remove_all_sd`` leaves out the service-discovery plugins (cloud SDKs):
    checking and testing rules needs none of them, and they are most of the build.
    """
    key = hashlib.sha256(_go_version().encode()).hexdigest()[:12]
    target = cache_root() / "bin" / f"promtool-{PROMETHEUS_VERSION}-{key}"
    with _built_once(target, ["promtool"]) as build_dir:
        if build_dir is not None:
            release = "3." + PROMETHEUS_VERSION.removeprefix("v0.3")  # v0.3XX.Y is Prometheus 3.XX.Y
            ldflags = f"-s -w -X github.com/prometheus/common/version.Version={release}"
            package = f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_VERSION}"
            log(f"installing promtool {release} into {target}")
            _go_with_progress(
                ["install", "-trimpath", "-tags", "remove_all_sd", "-ldflags", ldflags, package],
                packages=None,
                cwd=build_dir,
                env={"GOBIN": str(build_dir), "GOFLAGS": "-mod=mod"},
            )
    return target


@contextlib.contextmanager
def _built_once(target: Path, names: Sequence[str]) -> Iterator[Path | None]:
    """Yield a scratch directory to build into, or None when ``target`` is complete.

    A file lock serialises concurrent builders (a test run and a demo); the
    scratch directory is renamed into place only after a successful build,
    so an interrupted build never leaves a half-filled cache entry.
    """
    if all((target / name).exists() for name in names):
        yield None
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{target.name}.lock", f"the build of {target.name}"):
        if all((target / name).exists() for name in names):
            yield None
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            started = time.monotonic()
            yield scratch
            missing = [name for name in names if not (scratch / name).exists()]
            if missing:
                raise RuntimeError(f"build finished without {missing} in {scratch}")
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
            log(f"built {', '.join(names)} in {time.monotonic() - started:.0f}s")
            # Builds of other versions or keys are never used again: disk use stays bounded.
            family = target.name.rsplit("-", 2)[0] + "-"
            for stale in target.parent.glob(f"{family}*"):
                if stale.is_dir() and stale != target and not stale.name.startswith("."):
                    shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an flock on ``path``; while another process holds it, say so every 30 s.

    A build started by another test run or demo can take minutes: a silent
    wait looks like a hang.
    """
    with open(path, "a+") as lock:
        started = next_report = time.monotonic()
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= next_report:
                    lock.seek(0)
                    holder = lock.read().strip() or "another process"
                    log(f"waiting for {what}: {path} is locked by {holder} ({now - started:.0f}s so far)")
                    next_report = now + 30
                time.sleep(1)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("the Go toolchain is needed to build the local control plane")
    return go


def _go_version() -> str:
    return subprocess.run([_go(), "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def _go_with_progress(
    args: list[str], packages: list[str] | None, cwd: Path, env: dict[str, str] | None = None
) -> None:
    """Run ``go <args> -v``, printing ``[n/total]`` as packages compile."""
    full_env = {**os.environ, **(env or {})}
    total = _count_deps(packages, cwd, full_env) if packages else None
    argv = [_go(), args[0], "-v", *args[1:]]
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    built = 0
    downloads = 0
    last_print = 0.0
    tail: list[str] = []
    for raw in proc.stderr:
        line = raw.rstrip()
        tail = [*tail[-40:], line]
        if re.match(r"^[\w.\-]+(/[\w.\-~]+)*$", line):
            built += 1
            now = time.monotonic()
            if now - last_print >= 5:
                last_print = now
                of = f"/{total}" if total else ""
                log(f"[{built}{of}] {line}")
        elif line.startswith("go: downloading"):
            downloads += 1
            if downloads % 25 == 1:
                log(f"downloading modules ({downloads} so far): {line.removeprefix('go: downloading ')}")
    if proc.wait() != 0:
        raise RuntimeError(f"`go {' '.join(args[:1])}` failed:\n" + "\n".join(tail))


def _count_deps(packages: list[str], cwd: Path, env: dict[str, str]) -> int | None:
    """How many packages the build may compile (stdlib and cached ones included)."""
    result = subprocess.run(
        [_go(), "list", "-deps", "-f", "{{.ImportPath}}", *packages],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return len(result.stdout.split()) if result.returncode == 0 else None


def regenerate_wrapper_module(kubernetes_version: str, etcd_version: str) -> None:
    """Rewrite scripts/kubebin/go.mod from k8s.io/kubernetes' own go.mod.

    k8s.io/kubernetes replaces every staging module with a path inside its
    own tree (``=> ./staging/src/k8s.io/api``). A module that depends on it
    must say where those come from: the published ``v0.<minor>.<patch>`` of
    each. The list is read from the upstream go.mod, never typed by hand.
    """
    info = subprocess.run(
        [_go(), "mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    upstream = Path(json.loads(info.stdout)["GoMod"]).read_text()
    staging = re.findall(r"^\s+(k8s\.io/[\w\-]+) => \./staging/src/", upstream, re.M)
    staging_version = "v0." + kubernetes_version.lstrip("v").split(".", 1)[1]
    replaces = "\n".join(f"\t{module} => {module} {staging_version}" for module in staging)
    (KUBEBIN_MODULE / "go.mod").write_text(
        "// Generated by `python -m falachefe_devstack.toolchain regen`; do not edit.\n"
        "module falachefe.io/kubebin\n\n"
        "go 1.23.0\n\n"
        f"require (\n\tgo.etcd.io/etcd/server/v3 {etcd_version}\n\tk8s.io/kubernetes {kubernetes_version}\n)\n\n"
        f"replace (\n{replaces}\n)\n"
    )
    (KUBEBIN_MODULE / "go.sum").unlink(missing_ok=True)
    subprocess.run([_go(), "mod", "tidy"], check=True, cwd=KUBEBIN_MODULE)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["regen"]:
        regenerate_wrapper_module(KUBERNETES_VERSION, ETCD_VERSION)
        return 0
    toolchain = ensure_all()
    for name, path in vars(toolchain).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
