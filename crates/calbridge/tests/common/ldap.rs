//! The OpenLDAP server of the LDAP directory tests (`calbridge::bench::slapd`, which the
//! benchmark uses too). Without Debian's `slapd` the test says it skipped, unless
//! `CALBRIDGE_REQUIRE_SERVICES=1` makes that a failure.

use calbridge::bench::slapd::{self, TestSlapd};

/// A server with a generated tree of `n_people`, or `None` (the test skips) without `slapd`.
pub fn slapd_with(n_people: usize) -> Option<TestSlapd> {
    if !slapd::available() {
        assert!(
            !super::postgres::services_required(),
            "CALBRIDGE_REQUIRE_SERVICES=1 but slapd is not installed: apt-get install slapd ldap-utils (.ci/services/slapd.sh install)"
        );
        eprintln!("skipped: slapd is not installed (apt-get install slapd ldap-utils)");
        return None;
    }
    Some(TestSlapd::start(n_people).expect("the test's slapd starts"))
}
