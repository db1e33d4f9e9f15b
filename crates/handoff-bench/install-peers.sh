#!/usr/bin/env bash
# Installs the tools handoff is compared with, for `run.sh` / `handoff-bench compare`:
# - Server::Starter (`start_server`): Debian's libserver-starter-perl (needs root and apt);
# - PM2: the npm package, into target/bench-peers (nothing global), where the bench looks.
# Node.js itself comes from Debian's nodejs package (the repository's CI installs it).
# Either part is skipped with a message when its installer is missing; the bench then leaves
# that contender out and prints why.
set -uo pipefail
cd "$(dirname "$0")/../.."
PM2_VERSION=${PM2_VERSION:-7.0.4}
if command -v start_server >/dev/null; then
  echo "install-peers: start_server present: $(command -v start_server)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "install-peers: apt-get install libserver-starter-perl"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends libserver-starter-perl >/dev/null
else
  echo "install-peers: cannot install Server::Starter (needs root and apt-get): apt-get install libserver-starter-perl"
fi
if ! command -v npm >/dev/null; then
  echo "install-peers: npm not found (apt-get install nodejs npm); PM2 left out"
elif [ -f target/bench-peers/node_modules/pm2/package.json ] &&
     grep -q "\"version\": \"$PM2_VERSION\"" target/bench-peers/node_modules/pm2/package.json; then
  echo "install-peers: pm2 $PM2_VERSION present in target/bench-peers"
else
  echo "install-peers: npm install pm2@$PM2_VERSION into target/bench-peers"
  mkdir -p target/bench-peers
  npm install --prefix target/bench-peers --no-audit --no-fund --loglevel=error "pm2@$PM2_VERSION" >/dev/null
fi
