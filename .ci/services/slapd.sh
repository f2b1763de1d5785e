#!/usr/bin/env bash
# OpenLDAP for the LDAP directory's tests and benchmark. The tests start slapd themselves, each
# in a temporary folder on a free loopback port (crates/calbridge/src/bench/slapd.rs), so only
# the packages are needed here: no system instance is configured or left running.
#   .ci/services/slapd.sh install   apt packages slapd and ldap-utils, without a system instance
# Then: cargo test -p calbridge --test directory_ldap
set -euo pipefail

install() {
	if command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ]; then
		if command -v ldapsearch >/dev/null 2>&1; then
			stop_system_instance
			return 0
		fi
	fi
	# Debian's slapd would configure and start a directory of its own (asking for a domain and
	# an admin password); "no configuration" skips that.
	echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends slapd ldap-utils ||
		{ apt-get -o DPkg::Lock::Timeout=600 update &&
			apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends slapd ldap-utils; }
	stop_system_instance
}

# A system instance (an earlier install with a configuration) would hold no port the tests use,
# but it is not ours to leave running.
stop_system_instance() {
	if [ -f /run/slapd/slapd.pid ] && kill -0 "$(cat /run/slapd/slapd.pid)" 2>/dev/null; then
		service slapd stop >/dev/null 2>&1 || kill "$(cat /run/slapd/slapd.pid)" || true
	fi
}

case "${1:-}" in
install) install ;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
