#!/bin/sh
# Entrypoint of the Redis stand-in (docker/standins/redis.Dockerfile): the official image's, minus the drop
# from root (this image starts as redis).
set -e

# `docker run IMAGE --port 7000` or `docker run IMAGE my.conf` mean redis-server with those arguments.
case "${1:-}" in
	-* | *.conf) set -- redis-server "$@" ;;
esac

# The official image's redis-server is compiled with protected mode off (other containers are its clients);
# Debian's is not, and with no password it would refuse every client but 127.0.0.1. Turn it off here unless
# the command sets it. (Appended: a config file, if any, must stay the first argument; a `protected-mode`
# line in such a file is overridden, where the official image would honour it.)
if [ "${1:-}" = redis-server ]; then
	case " $* " in
		*" --protected-mode "*) ;;
		*) set -- "$@" --protected-mode no ;;
	esac
fi

exec "$@"
