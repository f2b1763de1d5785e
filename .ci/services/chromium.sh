#!/usr/bin/env bash
# Headless Chromium for the admin page's browser test
# (crates/calbridge/tests/admin_page_browser.rs).
#
#   .ci/services/chromium.sh install   installs Debian's chromium and chromium-driver if
#                                      /usr/bin/chromium is missing
set -euo pipefail

usage() {
  echo "usage: $0 install" >&2
  exit 2
}

# One headless start right after the install, so that the test's first browser is not the cold
# one that builds the font and profile caches. Its output is shown only when it fails.
warm_up() {
  local profile
  profile=$(mktemp -d)
  if ! timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu --no-first-run \
      --user-data-dir="$profile" --dump-dom about:blank >"$profile.log" 2>&1; then
    echo "chromium: the warm-up start failed; its output:" >&2
    cat "$profile.log" >&2
  fi
  rm -rf "$profile" "$profile.log"
}

install() {
  if [ -x /usr/bin/chromium ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
    warm_up
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A fresh container has empty package lists; a failed install is retried once after an
  # update so that stale lists (a mirror that moved on) are refreshed as well.
  if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update
  fi
  if ! $sudo apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium chromium-driver; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update
    $sudo apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium chromium-driver
  fi
  if [ ! -x /usr/bin/chromium ]; then
    echo "chromium: installed packages but /usr/bin/chromium is still missing" >&2
    exit 1
  fi
  echo "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
  warm_up
}

case "${1:-}" in
  install) install ;;
  *) usage ;;
esac
