//! The `Holdings` contract suite (the gate of the buyer's caps, `lua/admit.lua`) against Redis
//! (`TEST_REDIS_URL`, default database 15 of the local server) and against a Redis Cluster
//! (`TEST_REDIS_CLUSTER_NODES`, default the one `scripts/redis-cluster-up` starts), each case in a
//! namespace of its own.

use std::sync::Arc;

use orderly_app::Holdings;
use orderly_redis::{RedisConnection, RedisHoldings, RedisTarget};
use rand::TryRngCore;

fn namespace() -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    format!("orderly-test-{}", u64::from_le_bytes(bytes))
}

async fn gate(target: RedisTarget) -> Arc<dyn Holdings> {
    let connection = RedisConnection::connect(&target).await.expect("Redis is up (CI starts it; see .ci/run)");
    Arc::new(RedisHoldings::with_connection(connection, namespace()))
}

orderly_contract::holdings_contract!(|| async {
    gate(RedisTarget::Single(
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned()),
    ))
    .await
});

mod on_a_cluster {
    use super::*;

    orderly_contract::holdings_contract!(|| async {
        let nodes = std::env::var("TEST_REDIS_CLUSTER_NODES")
            .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned());
        gate(RedisTarget::Cluster(nodes.split(',').map(str::to_owned).collect())).await
    });
}
