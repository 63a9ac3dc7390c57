#!/usr/bin/env bash
# Install the OHIF viewer's prebuilt dist/ (npm package @ohif/app, MIT) into a folder, idempotently.
#
#   deploy/ohif/fetch-ohif.sh [TARGET]      default TARGET: .cache/ohif (git-ignored)
#
# Leaves TARGET/<version>/dist/ (about 200 MB unpacked, a 50 MB download). The version and the
# tarball's sha512 are pinned: a changed tarball fails. Runs `npm pack` only, no `npm install`:
# the package's dependencies are bundled in dist/ already. Needs npm, tar and python3.
set -euo pipefail

OHIF_VERSION="3.13.2"
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

cd "$(dirname "$0")/../.."
target="${1:-.cache/ohif}/${OHIF_VERSION}"
if [ -f "${target}/dist/index.html" ]; then
    echo "OHIF ${OHIF_VERSION} already in ${target}/dist"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
tarball="$(npm pack --silent --pack-destination "${work}" "@ohif/app@${OHIF_VERSION}")"
actual="$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' \
    "${work}/${tarball}")"
if [ "${actual}" != "${OHIF_INTEGRITY}" ]; then
    echo "@ohif/app@${OHIF_VERSION}: integrity ${actual}, expected ${OHIF_INTEGRITY}" >&2
    exit 1
fi
tar -xzf "${work}/${tarball}" -C "${work}" package/dist package/LICENSE
mkdir -p "$(dirname "${target}")"
rm -rf "${target}.partial" "${target}"
mv "${work}/package" "${target}.partial"
mv "${target}.partial" "${target}"  # complete or absent: a killed run leaves no half dist/
echo "OHIF ${OHIF_VERSION} installed in ${target}/dist"
