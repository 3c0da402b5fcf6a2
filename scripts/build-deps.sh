#!/usr/bin/env bash
# Installs the Debian packages qkdni's build needs when they are missing: a C compiler,
# cmake and PCRE2 headers (libyang, bundled by the yang2 crate, is built from source).
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(gcc)
command -v cmake >/dev/null || need+=(cmake)
dpkg -s libpcre2-dev >/dev/null 2>&1 || need+=(libpcre2-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# the netconf-rs interop client (dev-dependency) links libssh2 with OpenSSL
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
