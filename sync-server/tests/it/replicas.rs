//! Two server replicas on one database ingesting the same agent's stream at once keep it
//! exactly-once: the stream's row lock orders them, each sees what the other committed.

use tollgate_schema::wire::WireEntry;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Agent, Answer, Chain, assert_books, chain_users, enroll, home_users, push, scalar,
};

const ENTRIES: usize = 3_000;
const BATCH: usize = 100;

fn window(entries: &[WireEntry], from_seq: i64, len: usize) -> &[WireEntry] {
    let start = usize::try_from(from_seq.max(1) - 1)
        .unwrap()
        .min(entries.len());
    let end = (start + len).min(entries.len());
    &entries[start..end]
}

fn acked_or_gap(answer: &Answer) -> i64 {
    match answer.status.as_u16() {
        200 => answer.body["acked_seq"].as_i64().unwrap(),
        409 => {
            let error = answer.error().error;
            assert_eq!(error.code, "gap", "{}", answer.body);
            error.acked_seq.unwrap()
        }
        other => panic!("unexpected {other}: {}", answer.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_ingesting_one_agent_keep_the_stream_exactly_once() {
    let db = TestDb::new().await;
    let one = TestServer::start(db.config()).await;
    let two = TestServer::start(db.config()).await;
    let (a, b) = (one.url(""), two.url(""));
    let agent: Agent = enroll(&db.pool, &a, "a1").await;
    home_users(&db.pool, "a1", &chain_users("a1", 7)).await;
    let mut chain = Chain::new("a1", 7);
    let entries = chain.take(ENTRIES);

    let mut acked = 0i64;
    let mut round = 0usize;
    while acked < ENTRIES as i64 {
        round += 1;
        let next = acked + 1;
        // Vary the shape: the same batch to both; overlapping batches (one reaching back into
        // what is acknowledged, one reaching further); and one replica a batch ahead (a gap
        // unless the other commits first).
        let (to_one, to_two) = match round % 3 {
            0 => (window(&entries, next, BATCH), window(&entries, next, BATCH)),
            1 => (
                window(&entries, next, BATCH),
                window(&entries, next - 30, BATCH + 60),
            ),
            _ => (
                window(&entries, next, BATCH),
                window(&entries, next + BATCH as i64, BATCH),
            ),
        };
        let (r1, r2) = tokio::join!(push(&a, &agent, to_one), push(&b, &agent, to_two));
        let (h1, h2) = (acked_or_gap(&r1), acked_or_gap(&r2));
        assert_eq!(r1.status, 200, "round {round}: {}", r1.body);
        assert!(h1 >= acked && h2 >= acked, "the head never moves back");
        acked = h1.max(h2);
        // The contiguous head, never past what was sent.
        let last = |w: &[WireEntry]| w.last().map_or(0, |e| e.seq);
        let sent_to = last(to_one).max(last(to_two));
        assert!(acked <= sent_to);
        let stored = scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await;
        assert_eq!(stored, acked, "round {round}: stored = acknowledged");
    }
    assert!(round >= ENTRIES / (2 * BATCH), "{round} rounds");
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(DISTINCT seq) FROM credit_transactions"
        )
        .await,
        ENTRIES as i64
    );
    assert_books(&db.pool, &agent, &entries).await;
    // Replaying the whole stream to both at once changes nothing.
    let (r1, r2) = tokio::join!(
        push(&a, &agent, &entries[..BATCH * 5]),
        push(&b, &agent, &entries[ENTRIES - BATCH * 5..])
    );
    assert_eq!(
        (r1.acked_seq(), r2.acked_seq()),
        (ENTRIES as i64, ENTRIES as i64)
    );
    assert_books(&db.pool, &agent, &entries).await;
    one.stop().await;
    two.stop().await;
}
