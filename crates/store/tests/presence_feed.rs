//! The presence feed on a real PostgreSQL: a saved presence that people see differently is
//! heard by every listener, with the person's key; the same presence saved again is not; and
//! what was decided while a listener was away can be read again. Instants are passed in.

mod common;

use std::time::Duration;

use calbridge_store::feed::Heard;
use calbridge_store::{CurrentPresence, PersonKey, PersonUpsert};
use common::{person, Backend, TestStore};
use jiff::Timestamp;

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn presence(activity: &str, note: &str, decided_at: Timestamp) -> CurrentPresence {
    CurrentPresence {
        activity: activity.to_string(),
        note: Some(note.to_string()),
        until: None,
        why: format!("{activity} because of a test"),
        next_change_at: None,
        decided_at,
        published_fingerprint: None,
    }
}

async fn database() -> Option<TestStore> {
    let backend = Backend::postgres().await?;
    Some(backend.fresh_store().await)
}

/// The next thing heard, within a deadline (the NOTIFY comes at the writer's commit).
async fn heard(listener: &mut calbridge_store::feed::PresenceListener) -> Heard {
    tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("heard within 10 s")
        .expect("the listener works")
}

#[tokio::test]
async fn a_changed_presence_is_heard_by_every_listener_and_an_unchanged_one_by_none() {
    let Some(store) = database().await else {
        return;
    };
    let feed = store.postgres().expect("PostgreSQL").presence_feed();
    let ada = person("m365", "ada@contoso.example");
    let bob = person("m365", "bob@contoso.example");
    for key in [&ada, &bob] {
        store
            .upsert_person(&PersonUpsert {
                key: key.clone(),
                display_name: None,
                sip_uri: None,
            })
            .await
            .unwrap();
    }
    let mut first = feed.listen().await.unwrap();
    let mut second = feed.listen().await.unwrap();

    store
        .save_presence(&ada, &presence("busy", "Review", t(0)))
        .await
        .unwrap();
    assert_eq!(heard(&mut first).await, Heard::Changed(vec![ada.clone()]));
    assert_eq!(heard(&mut second).await, Heard::Changed(vec![ada.clone()]));

    // The same presence decided again (a new owner after a take-over) wakes nobody; the next
    // thing heard is Bob's, saved after it.
    store
        .save_presence(&ada, &presence("busy", "Review", t(5)))
        .await
        .unwrap();
    store
        .save_presence(&bob, &presence("available", "Free", t(6)))
        .await
        .unwrap();
    assert_eq!(heard(&mut first).await, Heard::Changed(vec![bob.clone()]));

    // A batch in one transaction is heard at its commit, each person once.
    store
        .save_presences(&[
            (ada.clone(), presence("away", "Out", t(10))),
            (bob.clone(), presence("busy", "Call", t(10))),
        ])
        .await
        .unwrap();
    let mut people = Vec::new();
    while people.len() < 2 {
        let Heard::Changed(changed) = heard(&mut first).await else {
            panic!("a change");
        };
        people.extend(changed);
    }
    people.sort();
    let mut both = vec![ada.clone(), bob.clone()];
    both.sort();
    assert_eq!(people, both);
    // Nothing more: a marker saved afterwards is the next thing heard.
    let carol = person("m365", "carol@contoso.example");
    store
        .upsert_person(&PersonUpsert {
            key: carol.clone(),
            display_name: None,
            sip_uri: None,
        })
        .await
        .unwrap();
    store
        .save_presence(&carol, &presence("busy", "Marker", t(11)))
        .await
        .unwrap();
    assert_eq!(heard(&mut first).await, Heard::Changed(vec![carol.clone()]));

    let loaded = feed.load(std::slice::from_ref(&bob)).await.unwrap();
    assert_eq!(loaded, vec![(bob.clone(), presence("busy", "Call", t(10)))]);
    let since: Vec<PersonKey> = feed
        .decided_since(t(6))
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(since.len(), 3, "{since:?}");
    assert!(feed.decided_since(t(12)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_listener_whose_connection_is_cut_says_so_and_then_hears_again() {
    let Some(store) = database().await else {
        return;
    };
    let feed = store.postgres().expect("PostgreSQL").presence_feed();
    let ada = person("m365", "ada@contoso.example");
    store
        .upsert_person(&PersonUpsert {
            key: ada.clone(),
            display_name: None,
            sip_uri: None,
        })
        .await
        .unwrap();
    let mut listener = feed.listen().await.unwrap();
    // What a PostgreSQL restart does to the listening connection.
    let cut = store
        .database()
        .rows_as_text(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await;
    assert_eq!(
        cut,
        vec![vec![Some("true".to_string())]],
        "one listener cut"
    );
    // The listener says it lost the connection: either sqlx made it again at once (`Lost`),
    // or it could not and the caller listens anew.
    let outcome = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("the cut is noticed within 10 s");
    match outcome {
        Ok(Heard::Lost) => {}
        Err(_) => listener = feed.listen().await.unwrap(),
        Ok(other) => panic!("expected the cut, heard {other:?}"),
    }
    store
        .save_presence(&ada, &presence("busy", "After the cut", t(20)))
        .await
        .unwrap();
    assert_eq!(
        heard(&mut listener).await,
        Heard::Changed(vec![ada.clone()])
    );
    // What was decided while it was cut is read again by instant.
    let since = feed.decided_since(t(20)).await.unwrap();
    assert_eq!(since, vec![(ada, presence("busy", "After the cut", t(20)))]);
}
