#!/usr/bin/env bash
# Builds the container image the Docker end-to-end tests use, offline from
# any registry: debootstrap a minimal Debian 12 root with nginx-light and
# python3 from Debian's archive, then `docker import` it. The root file
# system is cached under /var/tmp, so a second run only re-imports.
#
#   sudo scripts/docker-image.sh            # prints the image name
#   sudo scripts/docker-image.sh --rootfs   # only the root file system tarball
#                                           # (no Docker needed): prints its path
#
# Environment: N502_IMAGE (default n502-e2e:bookworm),
#              N502_IMAGE_CACHE (default /var/tmp/n502trace-image),
#              N502_MIRROR (default: the first deb.debian.org-style URI in apt's sources).
set -euo pipefail

IMAGE=${N502_IMAGE:-n502-e2e:bookworm}
CACHE=${N502_IMAGE_CACHE:-/var/tmp/n502trace-image}
# Bump when the package list below changes, so a stale cached root is rebuilt.
RECIPE=3
PACKAGES=nginx-light,python3,procps,iproute2

mirror() {
  if [ -n "${N502_MIRROR:-}" ]; then echo "$N502_MIRROR"; return; fi
  local uri
  uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        grep -v security | head -n1 | awk '{print ($1=="deb") ? $2 : $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

ROOTFS_ONLY=0
[ "${1:-}" = "--rootfs" ] && ROOTFS_ONLY=1

if [ $ROOTFS_ONLY = 0 ] && ! docker info >/dev/null 2>&1; then
  echo "docker-image.sh: no Docker engine answers (start dockerd first)" >&2
  exit 1
fi

if [ $ROOTFS_ONLY = 0 ] && [ "$(docker image inspect -f '{{index .Config.Labels "n502.recipe"}}' "$IMAGE" 2>/dev/null)" = "$RECIPE" ]; then
  echo "$IMAGE"
  exit 0
fi

ROOT=$CACHE/rootfs-$RECIPE
TARBALL=$CACHE/rootfs-$RECIPE.tar
mkdir -p "$CACHE"
# One build at a time (tests may ask for the image and the root together).
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$TARBALL" ]; then
  rm -rf "$ROOT"
  echo "docker-image.sh: debootstrap bookworm ($PACKAGES) into $ROOT" >&2
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 || {
    echo "docker-image.sh: debootstrap failed, see $CACHE/debootstrap.log" >&2
    tail -n 20 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  # Trim what a container never uses; keep the image small and the import quick.
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
         "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
  # nginx-light's postinst may have left a default site listening on :80.
  rm -f "$ROOT"/etc/nginx/sites-enabled/default
  tar -C "$ROOT" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$ROOT"
fi

if [ $ROOTFS_ONLY = 1 ]; then
  echo "$TARBALL"
  exit 0
fi
docker import --change "LABEL n502.recipe=$RECIPE" --change 'CMD ["/bin/sh"]' "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
