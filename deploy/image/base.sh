#!/bin/sh
# A Debian bookworm base image made with debootstrap (minbase + python3, python3-venv,
# ca-certificates), imported into buildah's local storage, for machines that reach Debian's
# archive but no image registry. The Dockerfile's default base (python:3.11-slim) is for
# everyone else: `buildah bud --build-arg BASE=<this image>` picks this one instead.
#
#   deploy/image/base.sh                 # builds localhost/gb28181-base:bookworm unless present
#   GB_BASE_REBUILD=1 deploy/image/base.sh   # builds it again
#   deploy/image/base.sh --print-mirror       # the Debian archive it would use
#
# Environment: GB_BASE_IMAGE (the name), DEBIAN_MIRROR (default: the first URI of apt's
# deb.debian.org-style sources on this machine, else http://deb.debian.org/debian),
# DEBIAN_SUITE (bookworm). Needs root, debootstrap and buildah.
set -eu

NAME=${GB_BASE_IMAGE:-localhost/gb28181-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    # The archive apt already uses here (deb822 sources, then the one-line format).
    found=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    if [ -z "$found" ]; then
        found=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\2/p' \
            /etc/apt/sources.list 2>/dev/null | head -n 1)
    fi
    echo "${found:-http://deb.debian.org/debian}"
}

MIRROR=$(mirror)
if [ "${1:-}" = "--print-mirror" ]; then
    echo "$MIRROR"
    exit 0
fi

if [ -z "${GB_BASE_REBUILD:-}" ] && buildah inspect --type image "$NAME" >/dev/null 2>&1; then
    echo "base: $NAME is already in buildah's storage (GB_BASE_REBUILD=1 builds it again)"
    exit 0
fi

WORK=$(mktemp -d /var/tmp/gb28181-base.XXXXXX)
CTR=""
cleanup() {
    [ -n "$CTR" ] && buildah rm "$CTR" >/dev/null 2>&1 || true
    # debootstrap may leave /proc or /sys mounted inside the tree when it fails half-way.
    for m in proc sys dev/pts dev; do
        mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && umount -l "$WORK/rootfs/$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "base: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    echo "base: debootstrap failed" >&2
    exit 1
}
# Nothing of the build machine's downloads stays in the image.
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"* \
    "$WORK/rootfs/var/log/"*.log "$WORK/rootfs/var/log/apt/"* "$WORK/rootfs/debootstrap"
tar -C "$WORK/rootfs" --numeric-owner -cf "$WORK/rootfs.tar" .

CTR=$(buildah from scratch)
buildah add --quiet "$CTR" "$WORK/rootfs.tar" / >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /usr/bin/python3 \
    --label org.opencontainers.image.title="Debian $SUITE with python3 (gb28181 base)" \
    "$CTR"
buildah commit --quiet --rm "$CTR" "$NAME" >/dev/null
CTR=""
echo "base: $NAME committed"
