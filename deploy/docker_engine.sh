#!/usr/bin/env bash
# Makes a local Docker engine and the sandbox base image available, for the docker sandbox backend.
# Idempotent and quick when everything is there: installs docker.io + debootstrap if missing,
# starts dockerd in the background if no engine answers, builds and imports the image
# kpop-sandbox:bookworm (Debian minbase + python3; nothing is pulled) if it is missing.
# Not root, or no apt: says so and exits 0 without changing anything.
set -u
IMAGE="${KPOP_SANDBOX_IMAGE:-kpop-sandbox:bookworm}"
say() { echo "[docker_engine] $*"; }

if [ "$(id -u)" != 0 ]; then
  say "not root: leaving the Docker engine alone (docker sandbox tests will skip)"; exit 0
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  if ! command -v apt-get >/dev/null; then say "no apt-get: cannot install docker.io"; exit 0; fi
  say "installing docker.io and debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null || {
    say "apt-get install failed"; exit 1; }
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd in the background (log: /var/log/kpop-dockerd.log)"
  nohup dockerd >/var/log/kpop-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/kpop-dockerd.log"; exit 1; }
fi
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "engine up, image $IMAGE present"; exit 0
fi
ROOTFS="$(mktemp -d /var/tmp/kpop-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
say "building $IMAGE with debootstrap (about a minute)"
debootstrap --variant=minbase --include=python3 bookworm "$ROOTFS" >/var/log/kpop-debootstrap.log 2>&1 || {
  say "debootstrap failed; see /var/log/kpop-debootstrap.log"; exit 1; }
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null || { say "docker import failed"; exit 1; }
say "engine up, image $IMAGE built"
