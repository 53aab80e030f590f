# shellcheck shell=sh
# load_modules LIST: insmod the kernel modules listed in LIST (paths under /lib/modules/<release>, already in
# dependency order, written by build.sh), skipping those that are loaded. Shared by the initramfs and rcS.
load_modules() {
    local kdir rel name
    kdir=/lib/modules/$(uname -r)
    [ -f "$1" ] || return 0
    while read -r rel; do
        [ -n "$rel" ] || continue
        name=${rel##*/}
        name=${name%%.ko*}
        name=$(echo "$name" | tr - _)
        grep -q "^$name " /proc/modules && continue
        insmod "$kdir/$rel" || echo "tinycloud: cannot load $rel"
    done <"$1"
}
