#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not installed yet.
# apt-get runs only when something is missing; without root (and without passwordless sudo)
# it prints what to install and exits 1.
set -euo pipefail

missing=()
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo"
    else
        echo "error: missing Debian packages: ${missing[*]}" >&2
        echo "       run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
echo "daxlab: installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
