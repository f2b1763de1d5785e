//! `calbridge bench --store`: one instance on SQLite beside three on PostgreSQL in one table,
//! run small (a few dozen people, a 3 s lease) as the binary, and the messages of the cases it
//! refuses.
//!
//! PostgreSQL is the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Without a server the tests that need one say
//! they skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`.

mod common;

use common::bench;

use calbridge_store::scratch::server_url_from_env;
use sqlx::Connection;

/// The benchmark's databases on the server (it names them `calbridge_bench_…`).
async fn bench_databases(server: &str) -> Vec<String> {
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .expect("PostgreSQL answers");
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'calbridge_bench_%'")
            .fetch_all(&mut admin)
            .await
            .expect("list the databases");
    names.into_iter().map(|(name,)| name).collect()
}

/// The table row of `store`, split into its columns.
fn row<'a>(stdout: &'a str, store: &str) -> Vec<&'a str> {
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<&str>>())
        .filter(|columns| columns.first() == Some(&store))
        .collect();
    assert_eq!(rows.len(), 1, "one {store} row in:\n{stdout}");
    rows[0].clone()
}

fn number(column: &str, what: &str, stdout: &str) -> f64 {
    let value: f64 = column
        .parse()
        .unwrap_or_else(|_| panic!("{what} is not a number ({column:?}) in:\n{stdout}"));
    assert!(
        value.is_finite() && value > 0.0,
        "{what} is {value} in:\n{stdout}"
    );
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_on_sqlite_and_three_on_postgres_are_measured_side_by_side() {
    let Some(probe) = common::postgres::database("calbridge_test").await else {
        return;
    };
    probe.drop_now().await;
    let server = server_url_from_env();
    let before = bench_databases(&server).await;
    let (success, stdout, stderr) = bench(&[
        "--source",
        "graph",
        "--store",
        "both",
        "--instances",
        "3",
        "--users",
        "60",
        "--notifications",
        "5",
        "--latency-ms",
        "0",
        "--lease-seconds",
        "3",
        "--postgres-url",
        &server,
    ])
    .await;
    assert!(success, "the benchmark failed:\n{stdout}\n{stderr}");

    // store, instances, users, first sync, p50, p99, RSS total, RSS/1000, failover, per instance
    let sqlite = row(&stdout, "sqlite");
    let postgres = row(&stdout, "postgres");
    assert_eq!(&sqlite[1..3], ["1", "60"], "{stdout}");
    assert_eq!(&postgres[1..3], ["3", "60"], "{stdout}");
    for (name, columns) in [("sqlite", &sqlite), ("postgres", &postgres)] {
        for (index, what) in [
            (3, "first sync"),
            (4, "notify p50"),
            (5, "notify p99"),
            (6, "RSS total"),
        ] {
            number(columns[index], &format!("{name} {what}"), &stdout);
        }
    }
    assert_eq!(sqlite[8], "-", "no failover with one instance: {stdout}");
    let failover = number(postgres[8], "failover", &stdout);
    // Leases are renewed every third of their length, so a killed instance's last renewal
    // runs out between two thirds of the lease and the whole lease after the kill; a failover
    // quicker than that would mean the instance gave its shards back, i.e. was not killed.
    assert!(
        failover >= 2.0,
        "a killed instance's people wait for its lease (3 s) to run out, not {failover} s: {stdout}"
    );
    // One resident size per instance: "a / b / c".
    let per_instance: Vec<&str> = postgres[9..]
        .iter()
        .copied()
        .filter(|column| *column != "/")
        .collect();
    assert_eq!(per_instance.len(), 3, "{stdout}");
    assert_eq!(
        bench_databases(&server).await,
        before,
        "the benchmark dropped its database"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_server_is_named_in_a_clear_error() {
    let (success, stdout, stderr) = bench(&[
        "--source",
        "graph",
        "--store",
        "postgres",
        "--users",
        "10",
        "--postgres-url",
        "postgres://postgres:hunter2@127.0.0.1:1/postgres",
    ])
    .await;
    assert!(!success, "{stdout}");
    assert!(
        stderr
            .contains("PostgreSQL at postgres://postgres:***@127.0.0.1:1/postgres does not answer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is shown: {stderr}"
    );
}

#[tokio::test]
async fn comparing_stores_asks_for_the_graph_source() {
    let (success, _, stderr) = bench(&["--store", "both", "--source", "ews"]).await;
    assert!(!success);
    assert!(stderr.contains("--source graph"), "{stderr}");
}
