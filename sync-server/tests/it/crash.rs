//! The real server binary killed with SIGKILL in the middle of a batch loses nothing and
//! duplicates nothing: the batch's transaction dies with it, and the agent's retry of the same
//! bytes on a restarted server is applied once.
//!
//! The kill is timed by what PostgreSQL reports, not by sleeps: the test polls
//! `pg_stat_activity` until the push's transaction is running a statement that touches the
//! users' rows (the rules' `SELECT … FOR UPDATE` of the batch's users, or the `INSERT INTO
//! credit_transactions` whose foreign keys need them). On odd batches the test also holds those
//! rows (`FOR UPDATE`), so the transaction is provably still in flight when the kill lands; on
//! even batches it kills as soon as it sees either, wherever the transaction has got to by then.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::support::{TestDb, spawn_server};
use crate::sync_support::{
    Chain, assert_books, chain_users, enroll, home_users, push_bytes, push_request, scalar,
    try_push_bytes,
};

const BATCH: usize = 1_000;
const BATCHES: usize = 7;
/// Bound on every wait for PostgreSQL's signal (generous; never a sleep).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(60);

/// The pid of the backend running the push's users lock or insert, or `None` once the push has
/// finished.
async fn wait_for_insert(
    watcher: &tokio_postgres::Client,
    in_flight: &tokio::task::JoinHandle<Result<crate::sync_support::Answer, reqwest::Error>>,
) -> Option<i32> {
    let until = Instant::now() + SIGNAL_TIMEOUT;
    loop {
        let row = watcher
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND (query LIKE 'INSERT INTO credit_transactions%' \
                 OR query LIKE 'SELECT u.user_id FROM user_credits u%' \
                 OR query LIKE 'SELECT u.user_id, u.home_agent_id%') LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return Some(row.get(0));
        }
        if in_flight.is_finished() {
            return None;
        }
        assert!(
            Instant::now() < until,
            "the push's transaction never reached the users"
        );
        tokio::task::yield_now().await;
    }
}

async fn wait_until_gone(watcher: &tokio_postgres::Client, pid: i32) {
    let until = Instant::now() + SIGNAL_TIMEOUT;
    while watcher
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < until,
            "the dead server's backend never ended"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_batch_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let (watcher, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut server = spawn_server(&db.url);
    let mut base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    home_users(&db.pool, "a1", &chain_users("a1", 50)).await;
    let mut chain = Chain::new("a1", 50);
    let entries = chain.take(BATCH * BATCHES);
    let head = entries.len() as i64;
    let bodies: Vec<Vec<u8>> = entries
        .chunks(BATCH)
        .map(|c| serde_json::to_vec(&push_request(&agent, c, Some(head))).unwrap())
        .collect();
    assert_eq!(
        push_bytes(&base, &agent.credential, bodies[0].clone())
            .await
            .acked_seq(),
        BATCH as i64
    );

    let mut killed_mid_transaction = 0;
    for (i, body) in bodies.iter().enumerate().skip(1) {
        let acked_before = (i * BATCH) as i64;
        let hold = i % 2 == 1;
        let locker = if hold {
            let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            client
                .batch_execute("BEGIN; SELECT 1 FROM user_credits FOR UPDATE")
                .await
                .unwrap();
            Some(client)
        } else {
            None
        };
        let in_flight = {
            let (base, credential, body) = (base.clone(), agent.credential.clone(), body.clone());
            tokio::spawn(async move { try_push_bytes(&base, &credential, body).await })
        };
        let pid = wait_for_insert(&watcher, &in_flight).await;
        server.kill();
        if let Some(locker) = locker {
            locker.batch_execute("ROLLBACK").await.unwrap();
        }
        let answer = in_flight.await.unwrap();
        if let Some(pid) = pid {
            wait_until_gone(&watcher, pid).await;
        }
        let acked_now = scalar(&db.pool, "SELECT acked_seq FROM agent_streams").await;
        if hold {
            // The insert was blocked when the server died: its transaction never committed.
            assert!(pid.is_some());
            assert!(answer.is_err(), "the push cannot have been answered");
            assert_eq!(acked_now, acked_before);
            assert_eq!(
                scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
                acked_before
            );
        } else {
            assert!(acked_now == acked_before || acked_now == acked_before + BATCH as i64);
        }
        if acked_now == acked_before {
            killed_mid_transaction += 1;
        }

        // A new server on the same database; the agent retries the same bytes until acked.
        server = spawn_server(&db.url);
        base = server.url("");
        let until = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            match try_push_bytes(&base, &agent.credential, body.clone()).await {
                Ok(answer) if answer.status == 200 => {
                    assert_eq!(answer.acked_seq(), acked_before + BATCH as i64);
                    break;
                }
                other => {
                    assert!(Instant::now() < until, "retry never succeeded: {other:?}");
                    tokio::task::yield_now().await;
                }
            }
        }
        // And once more: a replay after the retry changes nothing.
        assert_eq!(
            push_bytes(&base, &agent.credential, body.clone())
                .await
                .acked_seq(),
            acked_before + BATCH as i64
        );
    }
    assert!(
        killed_mid_transaction >= BATCHES / 2,
        "{killed_mid_transaction}"
    );
    assert_books(&db.pool, &agent, &entries).await;
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) - count(DISTINCT (agent_id, incarnation, seq)) FROM credit_transactions"
        )
        .await,
        0
    );
}
