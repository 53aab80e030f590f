# shellcheck shell=sh
# NoCloud for tinycloud: find the `cidata` seed, read meta-data and user-data, and apply them the way
# cloud-init would (hostname every boot; SSH keys, password and scripts once per instance-id).
# The nc_* functions take explicit paths and touch nothing else, so they also run outside the guest
# (tests/images exercises them with the image's own busybox). nocloud_boot / nocloud_final are the guest's
# wiring, called from /etc/init.d/rcS and /etc/init.d/rc.final.

TC_LIB=${TC_LIB:-/usr/lib/tinycloud}
TC_STATE=${TC_STATE:-/var/lib/tinycloud}
TC_RUN=${TC_RUN:-/run/tinycloud}
TC_TAB=$(printf '\t')

tc_log() { echo "tinycloud: $*"; }

# nc_flatten FILE: FILE's YAML as "path TAB kind TAB value" lines (see yaml.awk); nothing if FILE is missing.
nc_flatten() {
    [ -f "$1" ] || return 0
    awk -f "$TC_LIB/yaml.awk" "$1"
}

# nc_values FLAT PATH [KIND]: every value stored at PATH (of KIND: s, i or b), one per line.
nc_values() {
    awk -F "$TC_TAB" -v p="$2" -v k="${3:-}" \
        '$1 == p && (k == "" || $2 == k) { sub(/^[^\t]*\t[^\t]*\t/, ""); print }' "$1"
}

# nc_first FLAT PATH: the first scalar at PATH.
nc_first() {
    nc_values "$1" "$2" s | head -n 1
}

# nc_sniff FILE: the content type cloud-init infers from the first line of an untyped part.
nc_sniff() {
    case $(head -n 1 "$1" | tr -d '\r') in
        "#cloud-config"*) echo text/cloud-config ;;
        "#cloud-boothook"*) echo text/cloud-boothook ;;
        "#!"*) echo text/x-shellscript ;;
        *) echo text/plain ;;
    esac
}

# nc_kind TYPE: what tinycloud does with a part of that content type.
nc_kind() {
    case $1 in
        text/cloud-config) echo cloud-config ;;
        text/x-shellscript | text/x-shellscript-per-instance | text/x-shellscript-per-once) echo script ;;
        text/x-shellscript-per-boot) echo script-per-boot ;;
        *) echo "ignored:$1" ;;
    esac
}

# nc_split_userdata FILE DIR: split user-data (plain, or MIME multipart, nested too) into DIR/part-* files and
# write DIR/manifest with one "file TAB kind" line per part, in document order.
nc_split_userdata() {
    rm -rf "$2"
    mkdir -p "$2"
    : >"$2/manifest"
    [ -s "$1" ] || return 0
    _nc_split "$1" "$2" part- 0
}

_nc_split() {
    local src=$1 dir=$2 prefix=$3 depth=$4 list file type enc name
    list=$dir/.list-$prefix
    awk -v out="$dir" -v prefix="$prefix" -f "$TC_LIB/mime.awk" "$src" >"$list"
    while IFS="$TC_TAB" read -r file type enc name; do
        case $enc in
            base64)
                if ! base64 -d <"$file" >"$file.dec"; then
                    printf '%s\t%s\n' "$file" "ignored:bad-base64" >>"$dir/manifest"
                    continue
                fi
                mv "$file.dec" "$file"
                ;;
            "" | 7bit | 8bit | binary) ;;
            *)
                printf '%s\t%s\n' "$file" "ignored:$enc" >>"$dir/manifest"
                continue
                ;;
        esac
        case $type in
            multipart/*)
                if [ "$depth" -lt 4 ]; then
                    _nc_split "$file" "$dir" "${file##*/}." $((depth + 1))
                fi
                continue
                ;;
            "" | text/plain) type=$(nc_sniff "$file") ;;
        esac
        printf '%s\t%s\n' "$file" "$(nc_kind "$type")" >>"$dir/manifest"
    done <"$list"
    rm -f "$list"
}

# nc_parts MANIFEST KIND: the part files of that kind, in order.
nc_parts() {
    [ -f "$1" ] || return 0
    awk -F "$TC_TAB" -v k="$2" '$2 == k { print $1 }' "$1"
}

# nc_config_flat MANIFEST: all cloud-config parts, flattened, in order.
nc_config_flat() {
    local part
    for part in $(nc_parts "$1" cloud-config); do
        nc_flatten "$part"
    done
}

# nc_ssh_keys META_FLAT CONFIG_FLAT: SSH public keys from meta-data `public-keys` (a list, or a mapping of
# names to keys) and cloud-config `ssh_authorized_keys`, without duplicates.
nc_ssh_keys() {
    {
        awk -F "$TC_TAB" '$1 == "public-keys" || index($1, "public-keys.") == 1 {
            sub(/^[^\t]*\t[^\t]*\t/, ""); print }' "$1"
        nc_values "$2" ssh_authorized_keys i
    } | grep -E '(^|[ ,])(ssh-[a-z0-9]+|ecdsa-sha2-[a-z0-9]+|sk-[a-z0-9.@-]+) AAAA' | awk '!seen[$0]++'
}

# nc_passwords CONFIG_FLAT: "user:password" lines for chpasswd: `password` (root is tinycloud's only user),
# then the entries of `chpasswd: list:` (a YAML list or a literal block), which win.
nc_passwords() {
    local pw
    pw=$(nc_first "$1" password)
    {
        [ -n "$pw" ] && printf 'root:%s\n' "$pw"
        nc_values "$1" chpasswd.list | grep -v -E '^[ ]*$|:(R|RANDOM)$' | sed 's/^[ ]*//'
    } | awk '!seen[$0]++'
}

# nc_hostname META_FLAT CONFIG_FLAT: cloud-config hostname or fqdn, else meta-data local-hostname, made safe.
nc_hostname() {
    local name
    name=$(nc_first "$2" hostname)
    [ -n "$name" ] || name=$(nc_first "$2" fqdn)
    [ -n "$name" ] || name=$(nc_first "$1" local-hostname)
    [ -n "$name" ] || name=$(nc_first "$1" hostname)
    printf '%s' "$name" | tr -c -d 'A-Za-z0-9.-' | cut -c 1-63
}

# nc_run_script FILE LOG: run one user script with its #! interpreter (sh when that is missing, e.g. bash).
nc_run_script() {
    local file=$1 log=$2 interp rc
    case $file in /*) ;; *) file=$PWD/$file ;; esac
    chmod 700 "$file"
    interp=$(sed -n '1s/^#![ ]*\([^ ]*\).*/\1/p' "$file")
    echo "tinycloud: $(date -u '+%Y-%m-%dT%H:%M:%SZ') running ${file##*/}" >>"$log"
    if [ -n "$interp" ] && [ -x "$interp" ]; then
        (cd / && HOME=/root exec "$file") <"/dev/null" >>"$log" 2>&1
    else
        [ -n "$interp" ] && echo "tinycloud: $interp not found, running ${file##*/} with sh" >>"$log"
        (cd / && HOME=/root exec sh "$file") <"/dev/null" >>"$log" 2>&1
    fi
    rc=$?
    echo "tinycloud: ${file##*/} exited with status $rc" >>"$log"
    return "$rc"
}

# --- guest wiring -----------------------------------------------------------------------------------------

# nocloud_mount_seed DIR: mount the seed read-only on DIR. Polls ~5 s for the devices to appear; busybox
# findfs misses ISO9660 images under ~96 KiB, so CD drives are also tried directly.
nocloud_mount_seed() {
    local tries=0 dev
    mkdir -p "$1"
    while [ "$tries" -lt 50 ]; do
        dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
        if [ -n "$dev" ] && mount -o ro "$dev" "$1" 2>/dev/null; then
            return 0
        fi
        for dev in /dev/sr0 /dev/sr1; do
            [ -b "$dev" ] || continue
            if mount -t iso9660 -o ro "$dev" "$1" 2>/dev/null; then
                [ -f "$1/meta-data" ] && return 0
                umount "$1"
            fi
        done
        usleep 100000
        tries=$((tries + 1))
    done
    return 1
}

tc_set_hostname() {
    local short=${1%%.*}
    hostname "$1"
    echo "$1" >/etc/hostname
    grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts >/etc/hosts.new 2>/dev/null
    if [ "$short" = "$1" ]; then
        echo "127.0.1.1 $1" >>/etc/hosts.new
    else
        echo "127.0.1.1 $1 $short" >>/etc/hosts.new
    fi
    mv /etc/hosts.new /etc/hosts
}

tc_install_keys() {
    mkdir -p /root/.ssh
    chmod 700 /root /root/.ssh
    cat >/root/.ssh/authorized_keys.new
    chmod 600 /root/.ssh/authorized_keys.new
    mv /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
}

# nocloud_boot: from rcS, before the network. Copies the seed to the disk (so later boots without it keep
# working), sets the hostname, and on a new instance-id installs SSH keys and passwords.
nocloud_boot() {
    local seed="$TC_STATE/seed" iid idir name keys f
    mkdir -p "$TC_RUN" "$TC_STATE"
    chmod 700 "$TC_STATE"
    if nocloud_mount_seed "$TC_RUN/cidata"; then
        rm -rf "$seed.new"
        mkdir -p "$seed.new"
        for f in meta-data user-data vendor-data network-config; do
            [ -f "$TC_RUN/cidata/$f" ] && cp "$TC_RUN/cidata/$f" "$seed.new/$f"
        done
        umount "$TC_RUN/cidata"
        chmod 600 "$seed.new"/* 2>/dev/null
        rm -rf "$seed"
        mv "$seed.new" "$seed"
    else
        tc_log "no NoCloud seed (cidata) found, keeping the previous configuration"
    fi
    [ -f "$seed/meta-data" ] || return 0

    nc_flatten "$seed/meta-data" >"$TC_RUN/meta.flat"
    nc_split_userdata "$seed/user-data" "$TC_RUN/parts"
    nc_config_flat "$TC_RUN/parts/manifest" >"$TC_RUN/config.flat"

    iid=$(nc_first "$TC_RUN/meta.flat" instance-id)
    [ -n "$iid" ] || iid=nocloud
    idir=$TC_STATE/instances/$(printf '%s' "$iid" | tr -c 'A-Za-z0-9._-' _)
    mkdir -p "$idir/sem"
    ln -sfn "$idir" "$TC_STATE/instance"
    echo "$iid" >"$TC_RUN/instance-id"

    name=$(nc_hostname "$TC_RUN/meta.flat" "$TC_RUN/config.flat")
    [ -n "$name" ] && tc_set_hostname "$name"

    if [ ! -e "$idir/sem/config" ]; then
        nc_ssh_keys "$TC_RUN/meta.flat" "$TC_RUN/config.flat" >"$TC_RUN/keys"
        keys=$(grep -c . "$TC_RUN/keys")
        # Replaced even when empty: an image made from another server must not keep letting its keys in.
        tc_install_keys <"$TC_RUN/keys"
        nc_passwords "$TC_RUN/config.flat" | chpasswd
        tc_log "instance $iid: $keys SSH key(s), hostname ${name:-unchanged}"
        # On disk before the semaphore: a power cut soon after the first boot (`virsh destroy`) must not leave
        # the instance marked as configured with an empty authorized_keys (ext4 keeps new files' data in memory).
        sync
        touch "$idir/sem/config"
    fi
}

# nocloud_final: from rc.final, once SSH listens. Runs user-data scripts and runcmd (once per instance,
# per-boot scripts every boot), logging to /var/log/user-data.log.
nocloud_final() {
    local idir="$TC_STATE/instance" log=/var/log/user-data.log part
    [ -f "$TC_RUN/parts/manifest" ] || return 0
    if [ ! -e "$idir/sem/scripts" ]; then
        # Marked before running, so a script that reboots the guest does not run again.
        touch "$idir/sem/scripts"
        mkdir -p "$idir/scripts"
        for part in $(nc_parts "$TC_RUN/parts/manifest" script); do
            cp "$part" "$idir/scripts/${part##*/}"
            nc_run_script "$idir/scripts/${part##*/}" "$log"
        done
        if [ -n "$(nc_values "$TC_RUN/config.flat" runcmd i | head -n 1)" ]; then
            { echo '#!/bin/sh'; nc_values "$TC_RUN/config.flat" runcmd i; } >"$idir/scripts/runcmd"
            nc_run_script "$idir/scripts/runcmd" "$log"
        fi
    fi
    for part in $(nc_parts "$TC_RUN/parts/manifest" script-per-boot); do
        nc_run_script "$part" "$log"
    done
    return 0
}
