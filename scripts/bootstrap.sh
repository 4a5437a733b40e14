#!/usr/bin/env bash
# Install everything the tests and the demo need, reusing what is already there.
#
#   - Debian packages: redis-server, the PostgreSQL server, openssl, setpriv, and
#     for the local node: containerd, runc, CNI plugins, buildah, mmdebstrap,
#     iptables, conntrack, gcc (the pause image);
#   - uv (pinned) and the project's virtualenv in .venv, synced to requirements.lock;
#   - checkov in a virtualenv of its own (requirements-checkov.lock), linked into .venv/bin;
#   - the Node bullmq producer used by the interoperability tests (tests/node);
#   - the Go-built Kubernetes (control plane and node), metrics-server, Helm and
#     promtool (the chart's alert rule tests),
#     and the project's image built from the Dockerfile, cached in ~/.cache/falachefe
#     ($FALACHEFE_DEV_CACHE).
#
# Safe to run again: each step checks before it works, so a warm machine
# finishes in seconds.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FALACHEFE_DEV_CACHE:-$HOME/.cache/falachefe}
uv_version=0.13.8
python=${PYTHON:-python3.11}
mkdir -p "$cache"
say() { printf '[bootstrap] %s\n' "$*" >&2; }

# -- Debian packages -------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v node >/dev/null || missing+=(nodejs npm)
# The local node: a container runtime, its network plugins, and the image tooling.
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v iptables >/dev/null || missing+=(iptables)
command -v conntrack >/dev/null || missing+=(conntrack)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    "${sudo_cmd[@]}" apt-get update -q >/dev/null
    "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  }
fi

# -- uv and the virtualenv -------------------------------------------------------------
uv="$cache/uv-$uv_version/bin/uv"
if [ ! -x "$uv" ]; then
  say "installing uv $uv_version into $cache"
  "$python" -m venv "$cache/uv-$uv_version"
  "$cache/uv-$uv_version/bin/pip" install -q "uv==$uv_version"
fi
export UV_CACHE_DIR="$cache/uv-cache"
venv="$repo/.venv"
lock_hash=$(cat "$repo/requirements.lock" "$repo/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.falachefe-lock" 2>/dev/null)" != "$lock_hash" ]; then
  say "syncing .venv to requirements.lock"
  [ -x "$venv/bin/python" ] || "$uv" venv -q --python "$python" "$venv"
  VIRTUAL_ENV="$venv" "$uv" pip sync -q "$repo/requirements.lock"
  VIRTUAL_ENV="$venv" "$uv" pip install -q --no-deps -e "$repo"
  echo "$lock_hash" > "$venv/.falachefe-lock"
fi

# -- checkov (the charts' and the worker Deployments' security scan) ------------------------
# In a virtualenv of its own: its pins (cachetools 5, packaging 23, ...) would
# otherwise move the versions the tests run against away from the image's.
checkov_venv="$cache/checkov-$(sha256sum "$repo/requirements-checkov.lock" | cut -c1-16)"
(
  flock 9
  if [ ! -f "$checkov_venv/.complete" ]; then
    say "installing checkov into $checkov_venv"
    rm -rf "$checkov_venv"
    "$uv" venv -q --python "$python" "$checkov_venv"
    VIRTUAL_ENV="$checkov_venv" "$uv" pip sync -q "$repo/requirements-checkov.lock"
    touch "$checkov_venv/.complete"
  fi
) 9>"$checkov_venv.lock"
ln -sfn "$checkov_venv/bin/checkov" "$venv/bin/checkov"

# -- Node bullmq producer ----------------------------------------------------------------
node_dir="$repo/tests/node"
if [ -f "$node_dir/package-lock.json" ]; then
  node_hash=$(sha256sum "$node_dir/package-lock.json" | cut -c1-16)
  if [ "$(cat "$node_dir/node_modules/.falachefe-lock" 2>/dev/null)" != "$node_hash" ]; then
    say "installing the Node bullmq producer (npm ci)"
    npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
    echo "$node_hash" > "$node_dir/node_modules/.falachefe-lock"
  fi
fi

# -- Go-built Kubernetes, metrics-server, Helm and promtool; the images the local node runs ---
PYTHONPATH="$repo/scripts" "$venv/bin/python" -m falachefe_devstack.toolchain >/dev/null
PYTHONPATH="$repo/scripts" "$venv/bin/python" -m falachefe_devstack.images >/dev/null
PYTHONPATH="$repo/scripts" "$venv/bin/python" -c 'from falachefe_devstack.toolchain import ensure_promtool; ensure_promtool()'
say "ready"
