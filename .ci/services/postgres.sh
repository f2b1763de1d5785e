#!/usr/bin/env bash
# PostgreSQL for the store's tests (crates/store/tests: every contract test runs on SQLite and
# on PostgreSQL). The machine runs the server; this only checks that it answers.
#   .ci/services/postgres.sh check   pg_isready against $CALBRIDGE_TEST_POSTGRES
#                                    (default postgres://postgres@127.0.0.1:5432/postgres)
# The tests create a database calbridge_test_<random hex> per store and drop it afterwards, so
# the URL's user must be allowed to CREATE DATABASE.
set -euo pipefail

url="${CALBRIDGE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
# The URL without its password, for messages.
shown="$(printf '%s' "$url" | sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#')"

install() {
	command -v pg_isready >/dev/null && return 0
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql-client ||
		{ apt-get -o DPkg::Lock::Timeout=600 update &&
			apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql-client; }
}

check() {
	install
	# A server that is still starting gets 30 s.
	for _ in $(seq 30); do
		if pg_isready -q -d "$url"; then
			echo "PostgreSQL answers at $shown"
			return 0
		fi
		sleep 1
	done
	echo "PostgreSQL does not answer at $shown ($(pg_isready -d "$url" 2>&1 || true))." >&2
	echo "Start it (on Debian: service postgresql start) or point CALBRIDGE_TEST_POSTGRES at a server." >&2
	return 1
}

case "${1:-}" in
check) check ;;
*)
	echo "usage: $0 check" >&2
	exit 2
	;;
esac
