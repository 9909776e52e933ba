#!/bin/sh
# Builds the gateway's image where no image registry is reachable: a Debian bookworm base made
# with debootstrap (deploy/image/base.sh, kept in buildah's storage once made), then the
# Dockerfile on it with `buildah bud --isolation chroot` (no daemon, no user namespaces).
#
#   deploy/image/build.sh            # -> localhost/gb28181-gateway:latest
#
# Environment: GB_IMAGE (the name), GB_BASE_IMAGE (the base's name), PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST (passed as build arguments when set; the build needs
# a package index with the gateway's dependencies, PyPI by default); GB_BUILD_CA, a CA bundle
# pip must trust during the build (a TLS-inspecting proxy's), by default pip's own setting
# here (PIP_CERT, else `pip config get global.cert`): it is mounted for the build only.
# Needs root.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
IMAGE=${GB_IMAGE:-localhost/gb28181-gateway:latest}
BASE=${GB_BASE_IMAGE:-localhost/gb28181-base:bookworm}
export GB_BASE_IMAGE="$BASE"

sh "$HERE/base.sh"

set -- --build-arg "BASE=$BASE"
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
    eval "val=\${$v:-}"
    [ -n "$val" ] && set -- "$@" --build-arg "$v=$val"
done

CA=${GB_BUILD_CA:-${PIP_CERT:-}}
if [ -z "$CA" ]; then
    CA=$(python3 -m pip config get global.cert 2>/dev/null || true)
fi
if [ -n "$CA" ] && [ -f "$CA" ]; then
    set -- "$@" -v "$CA:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt
fi

# --format docker keeps the HEALTHCHECK (the OCI format has no such field); --layers reuses
# the dependency layer while only the gateway's code changes.
buildah bud --isolation chroot --format docker --layers --force-rm --pull-never \
    "$@" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
echo "image: $IMAGE built on $BASE"
