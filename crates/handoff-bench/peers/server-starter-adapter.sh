#!/bin/sh
# Runs a socket-activated worker (LISTEN_FDS/LISTEN_PID, socket at fd 3) under Server::Starter,
# which hands its listening socket over as SERVER_STARTER_PORT=host:port=FD instead.
#   start_server --port=127.0.0.1:19100 -- /bin/sh server-starter-adapter.sh WORKER [ARGS...]
# The shell moves the socket to fd 3, sets LISTEN_FDS=1 and LISTEN_PID to its own pid, and
# execs the worker, which keeps that pid (listenfd and sd_listen_fds check LISTEN_PID).
set -eu
fd=${SERVER_STARTER_PORT##*=}
case $fd in
  '' | *[!0-9]* | *\;*)
    echo "server-starter-adapter: expected one socket in SERVER_STARTER_PORT, got '${SERVER_STARTER_PORT:-}'" >&2
    exit 1 ;;
esac
if [ "$fd" != 3 ]; then
  # dash takes one-digit fds on the left of a redirection only; Server::Starter's socket is
  # opened first, so it is a low number.
  eval "exec 3<&$fd $fd<&-"
fi
export LISTEN_FDS=1 LISTEN_PID=$$
unset LISTEN_FDNAMES
exec "$@"
