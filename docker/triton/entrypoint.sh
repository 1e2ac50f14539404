#!/bin/sh
# `docker run lenscope-triton`: Triton's admin APIs (model load/unload, logging, trace settings,
# shared-memory registration) locked as `lenscope serve triton` and the k8s Deployment lock them
# (client/triton/server.py ADMIN_APIS / ADMIN_HEADER). Triton reads the key only from its argv, so it
# is added here; the k8s Deployment sets `command: tritonserver` and passes the same flags itself.
#   LENSCOPE_TRITON_ADMIN_KEY=<8-128 of [A-Za-z0-9._-]>  requests with header lenscope-triton-admin-key
#                                                      (gRPC: triton-grpc-protocol-lenscope-triton-admin-key)
#   unset                                              a random key nobody holds: the admin APIs are off
#   LENSCOPE_TRITON_OPEN_ADMIN=1                        admin APIs open to anyone who reaches the ports
set -eu
apis=model-repository,logging,trace,shared-memory
header=lenscope-triton-admin-key
if [ "${LENSCOPE_TRITON_OPEN_ADMIN:-0}" = "1" ]; then
    echo "lenscope-triton: admin APIs OPEN (LENSCOPE_TRITON_OPEN_ADMIN=1)" >&2
    exec tritonserver "$@"
fi
key="${LENSCOPE_TRITON_ADMIN_KEY:-}"
if [ -z "$key" ]; then
    key=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    echo "lenscope-triton: admin APIs locked with a random key; set LENSCOPE_TRITON_ADMIN_KEY to use them" >&2
else
    case "$key" in
        *[!A-Za-z0-9._-]*)
            echo "lenscope-triton: LENSCOPE_TRITON_ADMIN_KEY may hold only letters, digits, '.', '_', '-'" >&2
            exit 2 ;;
    esac
    if [ ${#key} -lt 8 ] || [ ${#key} -gt 128 ]; then
        echo "lenscope-triton: LENSCOPE_TRITON_ADMIN_KEY must be 8-128 characters long (it is ${#key})" >&2
        exit 2
    fi
fi
exec tritonserver "$@" \
    "--grpc-restricted-protocol=$apis:$header=$key" \
    "--http-restricted-api=$apis:$header=$key"
