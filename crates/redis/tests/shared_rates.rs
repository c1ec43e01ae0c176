//! `RedisSharedRates` against Redis (`TEST_REDIS_URL`, default database 15), each test in a namespace of
//! its own: a bucket grants its burst and no more, as many as asked at most; what is left is shared by
//! every process that takes from it; an empty bucket says when its next token comes, and gives it then.

use std::time::Duration;

use orderly_app::SharedRates;
use orderly_app::ports::Taken;
use orderly_redis::{RedisConnection, RedisSharedRates, RedisTarget};
use rand::TryRngCore;

fn url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned())
}

/// Two processes' adapters on one namespace.
async fn two_processes() -> (RedisSharedRates, RedisSharedRates) {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let namespace = format!("orderly-test-{}", u64::from_le_bytes(bytes));
    let connect = async || {
        let connection = RedisConnection::connect(&RedisTarget::Single(url()))
            .await
            .expect("Redis is up (CI starts it; see .ci/run)");
        RedisSharedRates::with_connection(connection, namespace.clone())
    };
    (connect().await, connect().await)
}

#[tokio::test]
async fn a_bucket_grants_its_burst_across_processes_and_no_more() {
    let (one, other) = two_processes().await;
    // 2 a second, burst 5: the first process asks 3 and gets them, the second asks 3 and gets the 2 left.
    assert_eq!(one.take("global:0", 2, 5, 3).await.expect("answers").granted, 3);
    assert_eq!(other.take("global:0", 2, 5, 3).await.expect("answers").granted, 2);
    let empty = one.take("global:0", 2, 5, 1).await.expect("answers");
    assert_eq!(empty.granted, 0, "the burst is spent: {empty:?}");
    assert!((1..=500).contains(&empty.wait_ms), "the next token within half a second: {empty:?}");
    // Another key is another bucket.
    assert_eq!(other.take("commodity:7", 2, 5, 5).await.expect("answers"), Taken { granted: 5, wait_ms: 0 });
}

#[tokio::test]
async fn an_empty_bucket_gives_its_next_token_when_it_said() {
    let (one, other) = two_processes().await;
    assert_eq!(one.take("commodity:1", 20, 1, 1).await.expect("answers").granted, 1);
    let empty = other.take("commodity:1", 20, 1, 1).await.expect("answers");
    assert_eq!(empty.granted, 0);
    assert!((1..=50).contains(&empty.wait_ms), "{empty:?}");
    tokio::time::sleep(Duration::from_millis(empty.wait_ms + 5)).await;
    assert_eq!(other.take("commodity:1", 20, 1, 1).await.expect("answers").granted, 1, "its token came");
    // At 20 a second the bucket never holds more than its burst, however long it waited.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(one.take("commodity:1", 20, 1, 5).await.expect("answers").granted, 1);
}
