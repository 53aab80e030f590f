#!/usr/bin/env bash
# Install labcloud on Debian 12 and start it: run `./install.sh` as root from the repository.
#
# Steps (each skipped when already done, so running it again is safe and quick):
#   1. the Debian packages that are missing (apt-get update once, first)
#   2. a virtualenv at <repo>/.venv with labcloud installed editable
#   3. the tinycloud guest image, in ${LABCLOUD_IMAGE_CACHE:-/var/cache/labcloud/images}
#   4. /usr/local/bin/labcloud -> <repo>/.venv/bin/labcloud (when that directory is writable)
#   5. `labcloud up`
# Options: --for-tests  install the test extras too, and skip steps 4 and 5 (what ./run-tests.sh uses)
#          --no-up      skip step 5
# Output of the installs goes to ${LABCLOUD_INSTALL_LOG:-<repo>/build/install.log}; on success only `labcloud up`
# prints anything.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly REPO
readonly VENV="$REPO/.venv"
readonly IMAGE_CACHE="${LABCLOUD_IMAGE_CACHE:-/var/cache/labcloud/images}"
readonly LOG="${LABCLOUD_INSTALL_LOG:-$REPO/build/install.log}"
readonly APT_PACKAGES=(
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config dnsmasq-base dnsmasq-utils
    iptables ipset nftables conntrack genisoimage syslinux syslinux-common mtools dosfstools fdisk kmod cpio iproute2
    openssh-client e2fsprogs python3-venv python3-dev gcc busybox procps util-linux libxml2-utils
)
# Only for --for-tests: the test suite starts its own PostgreSQL cluster from these binaries.
readonly TEST_APT_PACKAGES=(postgresql)

for_tests=0
start=1
for arg in "$@"; do
    case "$arg" in
    --for-tests) for_tests=1 start=0 ;;
    --no-up) start=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "install.sh: unknown option $arg (see --help)" >&2
        exit 2
        ;;
    esac
done

mkdir -p "$(dirname "$LOG")" "$REPO/build"
: >"$LOG"

fail() {
    echo "install.sh: $1 failed; the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

# run STEP COMMAND...: run a command with its output in the log, stop with the log's tail if it fails.
run() {
    local step=$1
    shift
    echo "### $step: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 </dev/null || fail "$step"
}

if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: run this as root (it installs Debian packages and runs libvirtd)" >&2
    exit 1
fi

install_packages() {
    local missing=() pkg wanted=("${APT_PACKAGES[@]}")
    ((for_tests)) && wanted+=("${TEST_APT_PACKAGES[@]}")
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    export DEBIAN_FRONTEND=noninteractive
    run "apt-get update" apt-get update -q
    run "apt-get install ${missing[*]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# A python >= 3.11 with venv support; `python3` first.
pick_python() {
    local candidate path
    for candidate in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        path=$(command -v "$candidate") || continue
        if "$path" -c 'import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

install_venv() {
    local extras=$1 python stamp_file stamp
    if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$(pick_python) || {
            echo "install.sh: no python >= 3.11 with venv support (apt-get install python3-venv)" >&2
            exit 1
        }
        rm -rf "$VENV"
        run "create $VENV" "$python" -m venv "$VENV"
    fi
    # Reinstall only when the project's requirements changed (pip itself takes seconds even when satisfied,
    # and inside a network namespace without a route out it could not even check).
    stamp_file="$VENV/.labcloud-install"
    stamp="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) extras=$extras"
    # An install with the test extras also serves a plain one.
    if [[ -f $stamp_file ]] && grep -qxF -e "$stamp" -e "${stamp%extras=*}extras=[test]" "$stamp_file" &&
        "$VENV/bin/python" -c 'import controller, agent, libvirt' 2>/dev/null; then
        return 0
    fi
    run "pip install -e .$extras" "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO$extras"
    echo "$stamp" >"$stamp_file"
}

build_image() {
    local out
    mkdir -p "$IMAGE_CACHE"
    echo "### build the guest image into $IMAGE_CACHE" >>"$LOG"
    out=$(bash "$REPO/images/tinycloud/build.sh" --cache-dir "$IMAGE_CACHE" 2>>"$LOG" </dev/null) ||
        fail "the guest image build"
    out=$(tail -n 1 <<<"$out")
    [[ -f $out ]] || fail "the guest image build (it printed no image path)"
    echo "$out" >"$REPO/build/image.path"
}

link_cli() {
    if [[ -d /usr/local/bin && -w /usr/local/bin ]]; then
        ln -sfn "$VENV/bin/labcloud" /usr/local/bin/labcloud
    fi
}

install_packages
if ((for_tests)); then
    install_venv "[test]"
else
    install_venv ""
fi
build_image
if ((!for_tests)); then
    link_cli
fi
if ((start)); then
    exec "$VENV/bin/labcloud" up
fi
