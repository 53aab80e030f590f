#!/usr/bin/env bash
# Run labcloud's whole test suite: first the same installs as ./install.sh (Debian packages, the virtualenv with
# the test extras, the guest image) without starting a cloud, then pytest. Arguments go to pytest, e.g.
#   ./run-tests.sh -m "not e2e"
#   ./run-tests.sh tests/controller -x
# Installs are logged to build/install.log; pytest's exit status is this script's.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly REPO

bash "$REPO/install.sh" --for-tests
if [[ -z ${LABCLOUD_TEST_IMAGE:-} && -f $REPO/build/image.path ]]; then
    LABCLOUD_TEST_IMAGE=$(cat "$REPO/build/image.path")
    export LABCLOUD_TEST_IMAGE
fi
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
cd "$REPO"
exec "$REPO/.venv/bin/pytest" "$@"
