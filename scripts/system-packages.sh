#!/usr/bin/env bash
# Install the Debian packages hitl needs, only those missing:
#   dataset-fashion-mnist  real Fashion-MNIST (the demo and the tests)
#   chromium               headless browser tests (only with --browser)
#   npm                    the pages' pinned script libraries (only with --npm, and only that)
set -euo pipefail
want=()
if [ "${1:-}" = "--npm" ]; then
  command -v npm >/dev/null || want+=(npm)
else
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
  if [ "${1:-}" = "--browser" ]; then
    [ -x /usr/bin/chromium ] || want+=(chromium)
  fi
fi
[ ${#want[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing Debian packages: ${want[*]}"
$sudo apt-get install -y --no-install-recommends "${want[@]}" >/dev/null || {
  $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${want[@]}" >/dev/null
}
