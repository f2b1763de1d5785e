#!/usr/bin/env bash
# Kamailio presence server for the SIP publisher tests.
#   .ci/services/kamailio.sh install   apt packages (kamailio, presence modules, sipp)
#   .ci/services/kamailio.sh start     run on 127.0.0.1:$CALBRIDGE_KAMAILIO_PORT (default 35060), UDP+TCP
#   .ci/services/kamailio.sh stop
#   .ci/services/kamailio.sh restart
# Then: CALBRIDGE_KAMAILIO=127.0.0.1:35060 cargo test -p calbridge-publish-sip --test kamailio
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
port="${CALBRIDGE_KAMAILIO_PORT:-35060}"
state_dir="${CALBRIDGE_KAMAILIO_DIR:-$repo_root/target/kamailio}"
pid_file="$state_dir/kamailio.pid"

install() {
	if command -v kamailio >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so ] \
		&& command -v sipp >/dev/null; then
		return 0
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y kamailio kamailio-presence-modules sip-tester
}

listening() {
	ss -lnu 2>/dev/null | grep -q "127.0.0.1:$port " && ss -lnt 2>/dev/null | grep -q "127.0.0.1:$port "
}

start() {
	if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
		echo "kamailio already running (pid $(cat "$pid_file"))"
		return 0
	fi
	mkdir -p "$state_dir"
	# A fresh db_text directory at every start: presence state never survives a restart.
	rm -rf "$state_dir/db"
	cp -r /usr/share/kamailio/dbtext/kamailio "$state_dir/db"
	sed -e "s|__CB_PORT__|$port|g" -e "s|__CB_DB_URL__|text://$state_dir/db|g" \
		"$repo_root/.ci/services/kamailio.cfg" >"$state_dir/kamailio.cfg"
	kamailio -c -f "$state_dir/kamailio.cfg" >"$state_dir/check.log" 2>&1 || {
		cat "$state_dir/check.log" >&2
		exit 1
	}
	kamailio -f "$state_dir/kamailio.cfg" -P "$pid_file" -Y "$state_dir" -w "$state_dir" \
		-m 64 -M 8 -E >>"$state_dir/kamailio.log" 2>&1 &
	for _ in $(seq 1 100); do
		if listening && [ -f "$pid_file" ]; then
			echo "kamailio listening on 127.0.0.1:$port (udp+tcp), pid $(cat "$pid_file")"
			return 0
		fi
		sleep 0.1
	done
	echo "kamailio did not start; log:" >&2
	cat "$state_dir/kamailio.log" >&2
	exit 1
}

stop() {
	if [ -f "$pid_file" ]; then
		pid="$(cat "$pid_file")"
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid"
			for _ in $(seq 1 100); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
		fi
		rm -f "$pid_file"
	fi
	for _ in $(seq 1 50); do
		listening || return 0
		sleep 0.1
	done
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
restart) stop && start ;;
*)
	echo "usage: $0 install|start|stop|restart" >&2
	exit 2
	;;
esac
