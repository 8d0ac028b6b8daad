#!/usr/bin/env bash
# Install the Debian packages the test suite needs when they are missing (Ceph RADOS Gateway: one mon,
# one OSD, one radosgw started by the tests themselves, no systemd; Chromium for the dashboard's browser
# tests; rclone, a peer of the directory benchmark, benchmarks/datasets.py; iproute2's ip and tc, which the
# cluster benchmark, benchmarks/cluster.py, uses for its network namespaces). Idempotent and quiet when satisfied.
set -euo pipefail
need=()
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v radosgw >/dev/null 2>&1 || need+=(radosgw)
command -v radosgw-admin >/dev/null 2>&1 || need+=(radosgw)
command -v ceph >/dev/null 2>&1 || need+=(ceph-common)
command -v ceph-authtool >/dev/null 2>&1 || need+=(ceph-common)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "error: missing Debian packages ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
