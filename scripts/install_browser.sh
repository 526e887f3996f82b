#!/bin/sh
# Install a headless browser for the end-to-end test of `rtseg review`
# (tests/review/test_review_browser.py drives Debian's chromium through Playwright).
#
# Idempotent: does nothing when /usr/bin/chromium exists. Otherwise, as root, installs Debian's
# chromium with apt-get. Always exits 0: without a browser the browser test skips with a reason.
# Playwright's own browser download (`playwright install`) is never used.
set -u

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_browser.sh: not root; skipping chromium install (browser test will skip)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get; skipping chromium install (browser test will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if apt-get update -q >"$log" 2>&1 && apt-get install -y -q --no-install-recommends chromium >>"$log" 2>&1; then
    echo "install_browser.sh: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)" >&2
else
    tail -n 5 "$log" >&2
    echo "install_browser.sh: apt-get could not install chromium (browser test will skip)" >&2
fi
rm -f "$log"
exit 0
