#!/usr/bin/env bash
# Build "tinycloud", labcloud's small guest image, offline from Debian packages: a self-contained,
# BIOS-bootable qcow2 (MBR, SYSLINUX on a FAT /boot partition, ext4 root) that boots like a cloud image.
# Nothing here needs root: no loop devices, no mounts (mkfs.ext4 -d, mtools, sfdisk on plain files).
#
# usage: build.sh [--cache-dir DIR]
#   DIR defaults to $LABCLOUD_IMAGE_CACHE, else /var/cache/labcloud/images. The result is
#   DIR/tinycloud-<key>.qcow2 plus DIR/tinycloud-<key>.json, where <key> hashes the versions of every package
#   used and the recipe files; if the qcow2 exists nothing is built. Progress goes to stderr; the last (only)
#   stdout line is the absolute path of the qcow2.
set -euo pipefail

RECIPE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly RECIPE_DIR
readonly NAME=tinycloud
readonly FORMAT_VERSION=1
readonly KERNEL_META=linux-image-cloud-amd64
readonly BOOT_MIB=32 ROOT_MIB=64 # disk = 1 MiB (MBR and gap) + FAT /boot + ext4 root
readonly MIN_RAM_MIB=128 MIN_DISK_GIB=1
readonly ROOT_LABEL=tinyroot
readonly MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
readonly BUILD_TOOLS=(syslinux syslinux-common e2fsprogs mtools dosfstools qemu-utils)

exec 3>&1 1>&2 # stdout carries only the result; every tool's chatter goes to stderr

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# step FUNCTION: run one build step and log how long it took. Not for use in conditions: set -e must hold.
step() {
    local started=$EPOCHREALTIME
    "$@"
    log "$1: $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }')"
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# --- package resolution and the cache key -------------------------------------------------------------------

PACKAGES=()          # "name=version" of every .deb the image is made of
declare -A VERSIONS  # name -> version, the same, for the JSON
KERNEL_RELEASE=""    # e.g. 6.1.0-56-cloud-amd64
TOOLS_MANIFEST=""    # versions of the host tools whose bytes end up in the image (syslinux) or shape it
UPDATED=0

# versions_of PKG...: "name version" of each package's candidate (one apt-cache call: each costs ~0.4 s).
versions_of() {
    apt-cache show --no-all-versions "$@" 2>/dev/null | awk '
        /^Package:/ { pkg = $2 }
        /^Version:/ && pkg != "" { print pkg, $2; pkg = "" }'
}

# The kernel package the metapackage currently points at (its first linux-image-* Depends).
kernel_package() {
    apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null | awk '
        /^Depends:/ {
            sub(/^Depends:[ ]*/, "")
            n = split($0, deps, /,[ ]*/)
            for (i = 1; i <= n; i++) {
                sub(/[ (|].*/, "", deps[i])
                if (deps[i] ~ /^linux-image-[0-9]/) { print deps[i]; exit }
            }
        }'
}

resolve() {
    local kernel pkg version wanted
    PACKAGES=()
    VERSIONS=()
    kernel=$(kernel_package)
    [[ -n $kernel ]] || {
        log "apt does not know $KERNEL_META"
        return 1
    }
    KERNEL_RELEASE=${kernel#linux-image-}
    wanted=("$KERNEL_META" "$kernel" $(grep -v -e '^#' -e '^[[:space:]]*$' "$RECIPE_DIR/packages.list"))
    while read -r pkg version; do
        VERSIONS[$pkg]=$version
    done < <(versions_of "${wanted[@]}")
    for pkg in "${wanted[@]}"; do
        [[ -n ${VERSIONS[$pkg]:-} ]] || {
            log "apt has no candidate for $pkg"
            return 1
        }
        [[ $pkg == "$KERNEL_META" ]] || PACKAGES+=("$pkg=${VERSIONS[$pkg]}")
    done
}

apt_update() {
    ((UPDATED == 0)) || return 1
    UPDATED=1
    [[ $(id -u) == 0 ]] || die "apt metadata looks stale and only root can run apt-get update"
    log "running apt-get update"
    apt-get update -q
}

recipe_hash() {
    (cd "$RECIPE_DIR" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c 1-64
}

tools_manifest() {
    dpkg-query -W -f '${Package} ${Version}\n' "${BUILD_TOOLS[@]}" 2>/dev/null || true
}

# Sets KEY, IMAGE and META from the resolved versions.
settle_key() {
    local pkg
    KEY=$({
        echo "format $FORMAT_VERSION"
        for pkg in $(printf '%s\n' "${!VERSIONS[@]}" | LC_ALL=C sort); do
            echo "package $pkg ${VERSIONS[$pkg]}"
        done
        printf '%s\n' "$TOOLS_MANIFEST" | sed 's/^/tool /'
        echo "recipe $(recipe_hash)"
    } | sha256sum | cut -c 1-16)
    IMAGE=$CACHE/$NAME-$KEY.qcow2
    META=$CACHE/$NAME-$KEY.json
}

cached() {
    [[ -f $IMAGE && -f $META ]]
}

finish() {
    printf '%s\n' "$IMAGE" >&3
    exit 0
}

# --- build steps --------------------------------------------------------------------------------------------

download() {
    local apt_opts=(-q)
    # As root apt would try to drop to _apt, which cannot write into our private build dir.
    [[ $(id -u) != 0 ]] || apt_opts+=(-o APT::Sandbox::User=root)
    rm -rf "$WORK/debs"
    mkdir -p "$WORK/debs"
    (cd "$WORK/debs" && apt-get download "${apt_opts[@]}" "${PACKAGES[@]}")
}

extract() {
    local deb
    for deb in "$WORK"/debs/*.deb; do
        dpkg-deb -x "$deb" "$X"
    done
    [[ -f $X/boot/vmlinuz-$KERNEL_RELEASE ]] || die "the kernel package has no boot/vmlinuz-$KERNEL_RELEASE"
    # The .deb ships no modules.dep; depmod only reads the extracted tree.
    depmod -b "$X" "$KERNEL_RELEASE"
}

# Paths (relative to lib/modules/<release>) of modules.list and everything they depend on, dependencies first.
module_closure() {
    awk -v want="$(grep -v -e '^#' -e '^[[:space:]]*$' "$RECIPE_DIR/modules.list" | tr '\n' ' ')" '
        function base(p) { sub(/.*\//, "", p); sub(/\.ko.*$/, "", p); gsub(/-/, "_", p); return p }
        function visit(m,    n, d, i) {
            if (m in seen) return
            seen[m] = 1
            n = split(deps[m], d, " ")
            for (i = n; i >= 1; i--) visit(d[i])
            print m
        }
        {
            m = $1; sub(/:$/, "", m)
            deps[m] = ""
            for (i = 2; i <= NF; i++) deps[m] = deps[m] " " $i
            path[base(m)] = m
        }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                k = w[i]; gsub(/-/, "_", k)
                if (!(k in path)) { print "no such module: " w[i] > "/dev/stderr"; bad = 1; continue }
                visit(path[k])
            }
            exit bad
        }' "$X/lib/modules/$KERNEL_RELEASE/modules.dep"
}

# install_busybox TREE: the static busybox and one absolute symlink per applet, where busybox wants it.
install_busybox() {
    local tree=$1 applet
    install -D -m 0755 "$X/bin/busybox" "$tree/bin/busybox"
    for applet in $("$tree/bin/busybox" --list-full); do
        [[ $applet != linuxrc && ! -e $tree/$applet && ! -L $tree/$applet ]] || continue
        mkdir -p "$tree/${applet%/*}"
        ln -s /bin/busybox "$tree/$applet"
    done
}

# install_modules TREE: the module closure under TREE/lib/modules/<release>, with its own modules.dep.
install_modules() {
    local tree=$1 rel kdir=lib/modules/$KERNEL_RELEASE
    while read -r rel; do
        install -D -m 0644 "$X/$kdir/$rel" "$tree/$kdir/$rel"
    done <"$WORK/modules.order"
    cp "$X/$kdir"/modules.{order,builtin,builtin.modinfo} "$tree/$kdir/"
    depmod -b "$tree" "$KERNEL_RELEASE"
    install -D -m 0644 "$WORK/modules.order" "$tree/etc/modules.order"
}

# install_dropbear TREE: dropbear and its shared libraries, found with the image's own dynamic loader so
# that a library missing from packages.list fails the build instead of leaking in from the host.
install_dropbear() {
    local tree=$1 libdir=lib/x86_64-linux-gnu bin lib path
    local loader=$X/$libdir/ld-linux-x86-64.so.2 search=$X/$libdir:$X/usr/$libdir
    install -D -m 0755 "$X/usr/sbin/dropbear" "$tree/usr/sbin/dropbear"
    for bin in dbclient dropbearkey dropbearconvert; do
        install -D -m 0755 "$X/usr/bin/$bin" "$tree/usr/bin/$bin"
    done
    mkdir -p "$tree/$libdir" "$tree/lib64"
    install -m 0755 "$loader" "$tree/$libdir/ld-linux-x86-64.so.2"
    ln -sfn "/$libdir/ld-linux-x86-64.so.2" "$tree/lib64/ld-linux-x86-64.so.2"
    for bin in "$tree"/usr/sbin/dropbear "$tree"/usr/bin/{dbclient,dropbearkey,dropbearconvert}; do
        "$loader" --library-path "$search" --list "$bin" | awk '/=>/ && $1 !~ /^\// { print $1, $3 }'
    done | sort -u | while read -r lib path; do
        [[ $path == "$X"/* ]] || die "$lib for dropbear resolves to '$path': add its package to packages.list"
        install -m 0644 "$(readlink -f "$path")" "$tree/$libdir/$lib"
    done
}

make_rootfs() {
    local dir
    mkdir -p "$R"
    for dir in dev proc sys run tmp root mnt home etc/dropbear var/log var/lib/tinycloud; do
        mkdir -p "$R/$dir"
    done
    ln -s ../run "$R/var/run"
    cp -a "$WORK/busybox/." "$R/"
    install_dropbear "$R"
    install_modules "$R"
    cp -R "$RECIPE_DIR/rootfs/." "$R/"
    # Modes are set here, not taken from the checkout.
    find "$R/etc/init.d" "$R/etc/acpi" "$R/usr/share/udhcpc" "$R/usr/sbin/chpasswd" -type f -exec chmod 0755 {} +
    chmod 0644 "$R"/usr/lib/tinycloud/* "$R"/etc/{passwd,group,shells,hostname,hosts,nsswitch.conf,profile,issue}
    chmod 0600 "$R/etc/shadow"
    chmod 0700 "$R/root"
    chmod 1777 "$R/tmp"
    cat >"$R/etc/os-release" <<EOF
NAME="tinycloud"
ID=tinycloud
ID_LIKE=debian
VERSION_ID="$FORMAT_VERSION"
VERSION="$FORMAT_VERSION ($OS_BASE packages, kernel $KERNEL_RELEASE)"
PRETTY_NAME="tinycloud $FORMAT_VERSION ($OS_BASE)"
BUILD_ID=$KEY
EOF
}

make_initrd() {
    local tree=$WORK/initrd
    mkdir -p "$tree"/{dev,proc,sys,newroot,etc}
    cp -a "$WORK/busybox/." "$tree/"
    install_modules "$tree"
    install -D -m 0755 "$RECIPE_DIR/initrd/init" "$tree/init"
    install -D -m 0644 "$RECIPE_DIR/rootfs/usr/lib/tinycloud/modules.sh" "$tree/usr/lib/tinycloud/modules.sh"
    (cd "$tree" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 -n >"$WORK/initrd.img"
}

# mkfs.ext4 -d copies the builder's uid/gid: a non-root build gives every inode back to root with debugfs.
make_root_ext4() {
    local img=$WORK/root.ext4
    truncate -s "${ROOT_MIB}M" "$img"
    mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$R" -E root_owner=0:0 "$img"
    if [[ $(id -u) != 0 ]]; then
        (cd "$R" && find . -mindepth 1 | sed 's|^\.||' |
            awk '{ print "sif \"" $0 "\" uid 0"; print "sif \"" $0 "\" gid 0" }') >"$WORK/owners.debugfs"
        debugfs -w -f "$WORK/owners.debugfs" "$img" >/dev/null 2>"$WORK/debugfs.log" ||
            die "debugfs could not fix ownership: $(tail -n 3 "$WORK/debugfs.log")"
    fi
}

make_boot_fat() {
    local img=$WORK/boot.fat
    # -h: hidden sectors = the partition's first sector, which SYSLINUX needs to find itself.
    mkfs.vfat -C -n TINYBOOT -h 2048 "$img" $((BOOT_MIB * 1024)) >/dev/null
    mcopy -i "$img" "$X/boot/vmlinuz-$KERNEL_RELEASE" ::/vmlinuz
    mcopy -i "$img" "$WORK/initrd.img" ::/initrd.img
    mcopy -i "$img" "$RECIPE_DIR/syslinux.cfg" ::/syslinux.cfg
    syslinux --install "$img"
}

make_disk() {
    local raw=$WORK/disk.raw
    truncate -s $((1 + BOOT_MIB + ROOT_MIB))M "$raw"
    sfdisk -q "$raw" <<EOF
label: dos
label-id: 0x${KEY:0:8}
start=2048, size=$((BOOT_MIB * 2048)), type=6, bootable
start=$(((1 + BOOT_MIB) * 2048)), type=83
EOF
    dd if="$MBR_BIN" of="$raw" bs=440 count=1 conv=notrunc status=none
    dd if="$WORK/boot.fat" of="$raw" bs=1M seek=1 conv=notrunc status=none
    dd if="$WORK/root.ext4" of="$raw" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc status=none
    qemu-img convert -q -f raw -O qcow2 -c "$raw" "$WORK/image.qcow2"
}

write_meta() {
    local sha size virtual pkg tool version sep
    sha=$(sha256sum "$WORK/image.qcow2" | cut -c 1-64)
    size=$(stat -c %s "$WORK/image.qcow2")
    virtual=$(stat -c %s "$WORK/disk.raw")
    {
        printf '{\n  "name": "%s",\n  "key": "%s",\n' "$NAME" "$KEY"
        printf '  "os_version": "tinycloud %s (%s)",\n' "$FORMAT_VERSION" "$OS_BASE"
        printf '  "kernel": "%s",\n  "sha256": "%s",\n  "size": %s,\n' "$KERNEL_RELEASE" "$sha" "$size"
        printf '  "virtual_size": %s,\n  "disk_format": "qcow2",\n' "$virtual"
        printf '  "min_ram_mib": %s,\n  "min_disk_gib": %s,\n' "$MIN_RAM_MIB" "$MIN_DISK_GIB"
        printf '  "default_user": "root",\n  "platform": "Other",\n  "packages": {'
        sep=""
        for pkg in $(printf '%s\n' "${!VERSIONS[@]}" | LC_ALL=C sort); do
            printf '%s\n    "%s": "%s"' "$sep" "$pkg" "${VERSIONS[$pkg]}"
            sep=","
        done
        printf '\n  },\n  "build_tools": {'
        sep=""
        while read -r tool version; do
            printf '%s\n    "%s": "%s"' "$sep" "$tool" "$version"
            sep=","
        done <<<"$TOOLS_MANIFEST"
        printf '\n  }\n}\n'
    } >"$WORK/image.json"
}

build() {
    local started=$SECONDS
    R=$WORK/root
    log "building $NAME-$KEY (kernel $KERNEL_RELEASE)"
    if ! download; then
        apt_update || die "apt-get download failed"
        resolve || die "cannot resolve the packages after apt-get update"
        settle_key
        if cached; then
            log "cached: $IMAGE"
            finish
        fi
        download || die "apt-get download failed after apt-get update"
    fi
    step extract
    module_closure >"$WORK/modules.order"
    install_busybox "$WORK/busybox"
    step make_rootfs
    step make_initrd
    step make_root_ext4
    step make_boot_fat
    rm -rf "$X" "$R"
    step make_disk
    write_meta
    chmod 0644 "$WORK/image.qcow2" "$WORK/image.json"
    # The qcow2 is the cache entry: move it last, so its presence means the JSON is there too.
    mv -f "$WORK/image.json" "$META"
    mv -f "$WORK/image.qcow2" "$IMAGE"
    log "built $IMAGE ($(stat -c %s "$IMAGE") bytes) in $((SECONDS - started)) s"
}

# --- main ---------------------------------------------------------------------------------------------------

CACHE=${LABCLOUD_IMAGE_CACHE:-/var/cache/labcloud/images}
while (($#)); do
    case $1 in
        --cache-dir)
            (($# >= 2)) || die "--cache-dir needs a directory"
            CACHE=$2
            shift 2
            ;;
        --cache-dir=*)
            CACHE=${1#*=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage
            die "unknown argument: $1"
            ;;
    esac
done
CACHE=$(realpath -m "$CACHE")
mkdir -p -m 0755 "$CACHE"
OS_BASE=$(awk -F = '/^VERSION_ID=/ { gsub(/"/, "", $2); v = $2 } /^VERSION_CODENAME=/ { c = " " $2 }
    END { print "Debian " v c }' /etc/os-release)
TOOLS_MANIFEST=$(tools_manifest)

if ! resolve; then
    apt_update || die "cannot resolve the packages"
    resolve || die "cannot resolve the packages after apt-get update"
fi
settle_key
if cached; then
    log "cached: $IMAGE"
    finish
fi

# One build at a time per cache directory; whoever waited finds the image built by the other.
exec 9>"$CACHE/.$NAME.lock"
flock -w 1800 9 || die "timed out waiting for $CACHE/.$NAME.lock"
if cached; then
    log "built meanwhile: $IMAGE"
    finish
fi
# Whatever builds that were killed left behind (we hold the lock): their work dir and its scratch dir.
for stale in "$CACHE/.$NAME-build."*; do
    [[ -e $stale ]] || continue
    scratch=$(cat "$stale/scratch" 2>/dev/null || true)
    [[ $scratch == /dev/shm/$NAME-build.* ]] && rm -rf "$scratch"
    rm -rf "$stale"
done
WORK=$(mktemp -d "$CACHE/.$NAME-build.XXXXXX")
# The unpacked packages (~100 MB, 1100 files, only read once) go to tmpfs when there is one: unpacking there
# takes a third of the time.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    X=$(mktemp -d "/dev/shm/$NAME-build.XXXXXX")
    echo "$X" >"$WORK/scratch"
else
    X=$WORK/x
fi
trap 'rm -rf "$WORK" "$X"' EXIT
trap 'exit 1' INT TERM HUP
build
finish
