//! [`RedisStockCache`]: the stock cache on Redis, the seed's way — Lua scripts, each atomic, each
//! idempotent per token.
//!
//! Keys carry the shop as a hash tag, `<ns>:{s:<shop>}:…`, so a shop's counters, tokens and restock
//! markers share one Redis Cluster slot and a per-shop order is one script call on a cluster too:
//!
//! | key | type | what |
//! |---|---|---|
//! | `<ns>:{s:<shop>}:stock:<commodity>` | hash `available`, `version`, `c:<version>`… | what can still be sold; every store change up to `version` is counted (at load: the version read), and so is each `c:<version>` above it |
//! | `<ns>:{s:<shop>}:token:<order_no>:<generation>` | hash `state`, `lines` | a reservation, with a time to live |
//! | `<ns>:{s:<shop>}:checks` | sorted set `<order_no>:<generation>` by due time | the reservation checks (remark 1), armed by the reserve in the same script, forgotten by the confirmation or when done (`due.lua` hands out the due ones) |
//! | `<ns>:{s:<shop>}:restock:<event key>` | string | a restock already applied, with a time to live |
//! | `<ns>:{s:<shop>}:parked:<commodity>` | list `version:delta` | changes for a counter not loaded yet, with a time to live |
//! | `<ns>:{s:<shop>}:master` | string | the replication id of the master the shop's keys were written on (`guard.lua`, `master_id.lua`) |
//! | `<ns>:sku-shop` | hash commodity → shop | where to find a commodity's counter (for `available` only) |
//!
//! Redis here keeps nothing on disk. Losing it loses counters and tokens, never correctness: an absent
//! counter answers `NotLoaded` (the flow reloads it from the store), an absent token answers `Missing`
//! (the flow reserves again), never "assume reserved". A counter reloaded while reservations it lost
//! are still being created is corrected by their confirmation, which carries the store's deductions and
//! versions (`follow.lua`), each version counted once however late it is reported again; a counter goes below zero when it sold those units again meanwhile (the store
//! refuses those orders). Redis must not evict keys (`maxmemory-policy noeviction`): a token lost while
//! its counter stays would be counted twice.
//!
//! On a Redis Cluster, a failover can lose the last writes of one shard while the others keep theirs
//! (replication is asynchronous). Every script — reads of the counters too — first checks the shop's
//! marker against the master it runs on (`guard.lua`); on a shop whose keys were written on another
//! master, the adapter drops that shop's keys (`forget.lua`) and calls again: the shop is then as after a
//! whole loss (above), reloaded from the store, and no other shop is touched. On a single server the drop
//! scans the whole keyspace inside one script (a promotion by Sentinel, or a restart that kept data:
//! rare, and it blocks the server for that scan).

use async_trait::async_trait;
use futures_util::StreamExt;
use orderly_app::PortError;
use orderly_app::model::{Restock, StockChange, StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Held, PortResult, Reserve, StockCache};
use orderly_domain::{CommodityId, ShopId};
use redis::{AsyncCommands, FromRedisValue, Script, ScriptInvocation, Value};

use crate::port_error;
use crate::{RedisConnection, RedisTarget};

#[derive(Debug, Clone)]
pub struct RedisCacheConfig {
    pub target: RedisTarget,
    /// Prefix of every key (no braces): several systems or test runs can share one Redis.
    pub namespace: String,
    /// How long a token (and a restock marker) is remembered.
    pub token_ttl_ms: u64,
}

struct Scripts {
    init: Script,
    reserve: Script,
    reserve_checked: Script,
    due: Script,
    done: Script,
    claim: Script,
    keep: Script,
    confirm: Script,
    release: Script,
    restock: Script,
    read: Script,
    forget: Script,
}

pub struct RedisStockCache {
    connection: RedisConnection,
    config: RedisCacheConfig,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStockCache").field("namespace", &self.config.namespace).finish_non_exhaustive()
    }
}

fn state_name(state: TokenState) -> &'static str {
    match state {
        TokenState::Reserved => "reserved",
        TokenState::Claimed => "claimed",
        TokenState::Confirmed => "confirmed",
        TokenState::Released => "released",
    }
}

fn state_of(name: &str) -> PortResult<TokenState> {
    match name {
        "reserved" => Ok(TokenState::Reserved),
        "claimed" => Ok(TokenState::Claimed),
        "confirmed" => Ok(TokenState::Confirmed),
        "released" => Ok(TokenState::Released),
        other => Err(crate::bad_answer(format!("unknown token state {other:?}"))),
    }
}

/// `id:qty;id:qty`, in the order of the reservation (the buyer's gate writes its lines the same way).
pub(crate) fn encode_lines(lines: &[(CommodityId, u32)]) -> String {
    lines.iter().map(|(id, quantity)| format!("{}:{quantity}", id.0)).collect::<Vec<_>>().join(";")
}

/// How many shops [`StockCache::due_checks`] asks at once.
const DUE_CALLS_AT_ONCE: usize = 16;

/// A token's name in its shop's keys: `<order_no>:<generation>`.
fn check_member(token: Token) -> String {
    format!("{}:{}", token.order_no, token.generation)
}

fn token_of(shop: ShopId, member: &str) -> PortResult<Token> {
    let (order_no, generation) = member.rsplit_once(':').ok_or_else(|| crate::bad_answer("bad check member"))?;
    let order_no = order_no.parse().map_err(|_| crate::bad_answer("bad order number in a check"))?;
    let generation = generation.parse().map_err(|_| crate::bad_answer("bad generation in a check"))?;
    Ok(Token { order_no, shop_id: shop, generation })
}

fn decode_lines(text: &str) -> PortResult<Vec<(CommodityId, u32)>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(';')
        .map(|line| {
            let (id, quantity) = line.split_once(':').ok_or_else(|| crate::bad_answer("bad token lines"))?;
            let id = id.parse().map_err(|_| crate::bad_answer("bad commodity in token lines"))?;
            let quantity = quantity.parse().map_err(|_| crate::bad_answer("bad quantity in token lines"))?;
            Ok((CommodityId(id), quantity))
        })
        .collect()
}

impl RedisStockCache {
    pub async fn connect(config: RedisCacheConfig) -> PortResult<RedisStockCache> {
        let connection = RedisConnection::connect(&config.target).await?;
        Ok(RedisStockCache::with_connection(connection, config))
    }

    /// On a connection shared with other adapters (`config.target` is not used).
    pub fn with_connection(connection: RedisConnection, config: RedisCacheConfig) -> RedisStockCache {
        assert!(!config.namespace.contains(['{', '}', '*', '?', '[', ']', '\\']), "the namespace must be plain");
        let master_id = include_str!("../lua/master_id.lua");
        let guarded =
            |parts: &[&str]| Script::new(&format!("{master_id}{}{}", include_str!("../lua/guard.lua"), parts.concat()));
        let follow = include_str!("../lua/follow.lua");
        let scripts = Scripts {
            init: guarded(&[follow, include_str!("../lua/init.lua")]),
            reserve: guarded(&[include_str!("../lua/unchecked.lua"), include_str!("../lua/reserve.lua")]),
            reserve_checked: guarded(&[include_str!("../lua/checked.lua"), include_str!("../lua/reserve.lua")]),
            due: guarded(&[include_str!("../lua/due.lua")]),
            done: Script::new(include_str!("../lua/done.lua")),
            claim: guarded(&[include_str!("../lua/claim.lua")]),
            keep: guarded(&[include_str!("../lua/keep.lua")]),
            confirm: guarded(&[follow, include_str!("../lua/confirm.lua")]),
            release: guarded(&[include_str!("../lua/release.lua")]),
            restock: guarded(&[follow, include_str!("../lua/restock.lua")]),
            read: guarded(&[include_str!("../lua/read.lua")]),
            forget: Script::new(&format!("{master_id}{}", include_str!("../lua/forget.lua"))),
        };
        RedisStockCache { connection, config, scripts }
    }

    fn stock_key(&self, shop: ShopId, id: CommodityId) -> String {
        format!("{}stock:{}", self.shop_prefix(shop), id.0)
    }

    fn token_key(&self, token: Token) -> String {
        format!("{}token:{}", self.shop_prefix(token.shop_id), check_member(token))
    }

    /// The shop's reservation checks: a sorted set of [`check_member`]s by when each is due.
    fn checks_key(&self, shop: ShopId) -> String {
        format!("{}checks", self.shop_prefix(shop))
    }

    /// Runs a script whose one key is `token`, answering a word.
    async fn on_token(&self, script: &Script, token: Token) -> PortResult<String> {
        self.run(token.shop_id, script.key(self.token_key(token))).await
    }

    /// What every key of a shop starts with (its hash tag): `forget.lua` finds a shop's keys by it.
    fn shop_prefix(&self, shop: ShopId) -> String {
        format!("{}:{{s:{}}}:", self.config.namespace, shop.0)
    }

    fn master_key(&self, shop: ShopId) -> String {
        format!("{}master", self.shop_prefix(shop))
    }

    /// Runs a guarded script on `shop`'s keys (the marker is added as its last key). A shop whose keys
    /// were written on another master is forgotten first, then the script runs again.
    async fn run<T: FromRedisValue>(&self, shop: ShopId, mut invocation: ScriptInvocation<'_>) -> PortResult<T> {
        invocation.key(self.master_key(shop));
        for _ in 0..4 {
            let answer: Value = invocation.invoke_async(&mut self.connection()).await.map_err(port_error)?;
            if !matches!(&answer, Value::BulkString(word) if word == b"stale") {
                return redis::from_redis_value(answer).map_err(crate::bad_answer);
            }
            self.forget(shop).await?;
        }
        Err(PortError::from(crate::CacheError::Contended("the shop's master kept changing")))
    }

    /// Drops the keys of a shop written on another master (see the module doc).
    async fn forget(&self, shop: ShopId) -> PortResult<()> {
        let prefix = self.shop_prefix(shop);
        let pattern = format!("{}*", prefix.replace('{', "\\{").replace('}', "\\}"));
        let dropped: u64 = self
            .scripts
            .forget
            .key(self.master_key(shop))
            .arg(&prefix)
            .arg(&pattern)
            .invoke_async(&mut self.connection())
            .await
            .map_err(port_error)?;
        tracing::warn!(
            shop = shop.0,
            dropped,
            "the shop's keys were written on another master (a failover may have lost some): forgotten, to be \
             reloaded from the store"
        );
        Ok(())
    }

    fn parked_key(&self, shop: ShopId, id: CommodityId) -> String {
        format!("{}parked:{}", self.shop_prefix(shop), id.0)
    }

    /// Adds the keys and arguments `follow.lua` needs for each change, after the script's first key and
    /// argument.
    fn follow_args(&self, invocation: &mut redis::ScriptInvocation<'_>, shop: ShopId, changes: &[StockChange]) {
        for (id, quantity, version) in changes {
            invocation.key(self.stock_key(shop, *id)).key(self.parked_key(shop, *id));
            invocation.arg(*quantity).arg(*version);
        }
    }

    fn restock_key(&self, shop: ShopId, key: &str) -> String {
        format!("{}restock:{key}", self.shop_prefix(shop))
    }

    fn directory_key(&self) -> String {
        format!("{}:sku-shop", self.config.namespace)
    }

    fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// A reserve, arming its check at `check_at_ms` when given (`checked.lua`).
    async fn reserve_with(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        claimed: bool,
        check_at_ms: Option<u64>,
    ) -> PortResult<Reserve> {
        let script = if check_at_ms.is_some() { &self.scripts.reserve_checked } else { &self.scripts.reserve };
        let mut invocation = script.key(self.token_key(token));
        for (id, _) in lines {
            invocation.key(self.stock_key(token.shop_id, *id));
        }
        let state = if claimed { TokenState::Claimed } else { TokenState::Reserved };
        invocation.arg(state_name(state)).arg(self.config.token_ttl_ms).arg(encode_lines(lines));
        for (_, quantity) in lines {
            invocation.arg(*quantity);
        }
        if let Some(check_at_ms) = check_at_ms {
            invocation.key(self.checks_key(token.shop_id)).arg(check_at_ms).arg(check_member(token));
        }
        let answer: Vec<String> = self.run(token.shop_id, invocation).await?;
        let line = |index: &str| -> PortResult<CommodityId> {
            let index: usize = index.parse().map_err(|_| crate::bad_answer("bad line index"))?;
            lines.get(index.wrapping_sub(1)).map(|(id, _)| *id).ok_or_else(|| crate::bad_answer("line index"))
        };
        match answer.first().map(String::as_str) {
            Some("reserved") => Ok(Reserve::Reserved),
            Some("held") => Ok(Reserve::AlreadyHeld(state_of(answer.get(1).map_or("", String::as_str))?)),
            Some("not_loaded") => {
                Ok(Reserve::NotLoaded(answer[1..].iter().map(|i| line(i)).collect::<PortResult<_>>()?))
            }
            Some("insufficient") => {
                let commodity_id = line(answer.get(1).map_or("", String::as_str))?;
                let available = answer.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
                Ok(Reserve::Insufficient { commodity_id, available })
            }
            other => Err(crate::bad_answer(format!("reserve answered {other:?}"))),
        }
    }

    /// Releases from `allowed` states. The token's lines are read first (the script must name every key
    /// it touches); the script checks they are still the token's and otherwise asks to read again.
    async fn release_from(&self, token: Token, allowed: &[TokenState]) -> PortResult<Option<TokenState>> {
        let token_key = self.token_key(token);
        let allowed = allowed.iter().map(|s| state_name(*s)).collect::<Vec<_>>().join(",");
        for _ in 0..8 {
            let lines_text: Option<String> = self.connection().hget(&token_key, "lines").await.map_err(port_error)?;
            let lines_text = lines_text.unwrap_or_default();
            let lines = decode_lines(&lines_text)?;
            let mut invocation = self.scripts.release.key(&token_key);
            for (id, _) in &lines {
                invocation.key(self.stock_key(token.shop_id, *id));
            }
            invocation.arg(&lines_text).arg(&allowed).arg(self.config.token_ttl_ms);
            for (_, quantity) in &lines {
                invocation.arg(*quantity);
            }
            let answer: Vec<String> = self.run(token.shop_id, invocation).await?;
            match answer.first().map(String::as_str) {
                Some("none") => return Ok(None),
                Some("was") => {
                    let state = answer.get(1).ok_or_else(|| crate::bad_answer("release without state"))?;
                    return Ok(Some(state_of(state)?));
                }
                Some("retry") => continue,
                other => return Err(crate::bad_answer(format!("release answered {other:?}"))),
            }
        }
        Err(PortError::from(crate::CacheError::Contended("token kept changing under release")))
    }
}

#[async_trait]
impl StockCache for RedisStockCache {
    async fn init(&self, levels: &[(CommodityId, StockLevel)], held: &[Held]) -> PortResult<()> {
        if levels.is_empty() {
            return Ok(());
        }
        // One script call per shop: each touches one slot (a reservation's lines are one shop's).
        let mut by_shop: std::collections::BTreeMap<ShopId, Vec<(CommodityId, StockLevel)>> = Default::default();
        for (id, level) in levels {
            by_shop.entry(level.shop_id).or_default().push((*id, *level));
        }
        let directory: Vec<(u64, u64)> = levels.iter().map(|(id, level)| (id.0, level.shop_id.0)).collect();
        let _: () = self.connection().hset_multiple(self.directory_key(), &directory).await.map_err(port_error)?;
        for (shop, levels) in by_shop {
            let mut invocation = self.scripts.init.prepare_invoke();
            invocation.arg(levels.len());
            for (id, level) in &levels {
                invocation.key(self.stock_key(shop, *id)).key(self.parked_key(shop, *id));
                invocation.arg(level.available).arg(level.version);
            }
            invocation.arg(self.config.token_ttl_ms);
            let index = |id: &CommodityId| levels.iter().position(|(loaded, _)| loaded == id).map(|i| i + 1);
            for held in held.iter().filter(|h| h.token.shop_id == shop) {
                // A line on a commodity this call does not load: the reservation is skipped whole.
                let Some(indices) = held.lines.iter().map(|(id, _)| index(id)).collect::<Option<Vec<_>>>() else {
                    continue;
                };
                invocation.key(self.token_key(held.token));
                invocation.arg(encode_lines(&held.lines)).arg(held.lines.len());
                for (i, (_, quantity)) in indices.into_iter().zip(&held.lines) {
                    invocation.arg(i).arg(*quantity);
                }
                let check_at = held.check_at_ms.map(|at_ms| at_ms.to_string()).unwrap_or_default();
                invocation.arg(check_at).arg(check_member(held.token));
            }
            // Last (before the marker `run` adds): `init.lua` takes it off the end.
            invocation.key(self.checks_key(shop));
            let _: String = self.run(shop, invocation).await?;
        }
        Ok(())
    }

    async fn reserve(&self, token: Token, lines: &[(CommodityId, u32)], claimed: bool) -> PortResult<Reserve> {
        self.reserve_with(token, lines, claimed, None).await
    }

    /// The checks live in Redis beside the reservations, in the shop's slot: lost only with them (a flush,
    /// a failover that loses the shop's last writes), and then made again with them by the reload.
    fn keeps_checks(&self) -> bool {
        true
    }

    async fn reserve_checked(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        check_at_ms: u64,
    ) -> PortResult<Reserve> {
        self.reserve_with(token, lines, false, Some(check_at_ms)).await
    }

    async fn due_checks(&self, shops: &[ShopId], now_ms: u64, retry_at_ms: u64, max: usize) -> PortResult<Vec<Token>> {
        let mut due = Vec::new();
        let (mut answered, mut failed) = (0, None);
        // A guarded call per shop (each its own slot), a few at a time. A shop that does not answer (its
        // master down, no failover yet) holds up only its own checks.
        let mut calls = futures_util::stream::iter(shops.iter().copied())
            .map(|shop| async move {
                let mut invocation = self.scripts.due.key(self.checks_key(shop));
                invocation.arg(now_ms).arg(retry_at_ms).arg(max);
                let members: Vec<String> = self.run(shop, invocation).await?;
                members.iter().map(|member| token_of(shop, member)).collect::<PortResult<Vec<Token>>>()
            })
            .buffer_unordered(DUE_CALLS_AT_ONCE);
        while let Some(tokens) = calls.next().await {
            match tokens {
                Ok(tokens) => {
                    answered += 1;
                    due.extend(tokens);
                }
                Err(error) => {
                    tracing::warn!(%error, "a shop's reservation checks not read; looked at again next time");
                    failed.get_or_insert(error);
                }
            }
            // The rest are handed out next time (those of shops already asked here come back at the retry).
            if due.len() >= max {
                break;
            }
        }
        match failed {
            Some(error) if answered == 0 => Err(error),
            _ => Ok(due),
        }
    }

    async fn checks_done(&self, tokens: &[Token], handed_out_at_ms: u64) -> PortResult<()> {
        let mut by_shop: std::collections::BTreeMap<ShopId, Vec<String>> = Default::default();
        for token in tokens {
            by_shop.entry(token.shop_id).or_default().push(check_member(*token));
        }
        for (shop, members) in by_shop {
            let mut invocation = self.scripts.done.key(self.checks_key(shop));
            invocation.arg(handed_out_at_ms).arg(members);
            let _: u64 = invocation.invoke_async(&mut self.connection()).await.map_err(port_error)?;
        }
        Ok(())
    }

    async fn checks_armed(&self, shops: &[ShopId]) -> PortResult<usize> {
        let mut counts = futures_util::stream::iter(shops.iter().copied())
            .map(|shop| async move {
                let count: usize = self.connection().zcard(self.checks_key(shop)).await.map_err(port_error)?;
                PortResult::Ok(count)
            })
            .buffer_unordered(DUE_CALLS_AT_ONCE);
        let mut armed = 0;
        while let Some(count) = counts.next().await {
            armed += count?;
        }
        Ok(armed)
    }

    async fn claim(&self, token: Token) -> PortResult<Claim> {
        let answer = self.on_token(&self.scripts.claim, token).await?;
        match answer.as_str() {
            "missing" => Ok(Claim::Missing),
            "claimed" => Ok(Claim::Claimed),
            "confirmed" => Ok(Claim::Confirmed),
            "released" => Ok(Claim::Released),
            other => Err(crate::bad_answer(format!("claim answered {other:?}"))),
        }
    }

    async fn confirm(&self, token: Token, deductions: &[StockChange]) -> PortResult<()> {
        let mut invocation = self.scripts.confirm.key(self.token_key(token));
        invocation.arg(self.config.token_ttl_ms);
        self.follow_args(&mut invocation, token.shop_id, deductions);
        invocation.key(self.checks_key(token.shop_id)).arg(check_member(token));
        let _: String = self.run(token.shop_id, invocation).await?;
        Ok(())
    }

    async fn release(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.release_from(token, &[TokenState::Reserved, TokenState::Claimed]).await
    }

    async fn release_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.release_from(token, &[TokenState::Reserved]).await
    }

    async fn keep_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        let mut invocation = self.scripts.keep.key(self.token_key(token));
        invocation.arg(self.config.token_ttl_ms);
        let found: String = self.run(token.shop_id, invocation).await?;
        if found.is_empty() { Ok(None) } else { state_of(&found).map(Some) }
    }

    async fn restock(&self, restock: &Restock) -> PortResult<()> {
        let mut invocation = self.scripts.restock.key(self.restock_key(restock.shop_id, &restock.key));
        invocation.arg(self.config.token_ttl_ms);
        self.follow_args(&mut invocation, restock.shop_id, &restock.lines);
        let _: String = self.run(restock.shop_id, invocation).await?;
        Ok(())
    }

    async fn available(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<u64>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let shops: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.directory_key())
            .arg(&raw)
            .query_async(&mut self.connection())
            .await
            .map_err(port_error)?;
        let mut by_shop: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (position, shop) in shops.iter().enumerate() {
            // No shop known: never loaded.
            if let Some(shop) = shop {
                by_shop.entry(*shop).or_default().push(position);
            }
        }
        // A guarded read per shop: a shop whose keys a failover may have made stale is reloaded, not read.
        let reads = by_shop.into_iter().map(|(shop, positions)| {
            let mut invocation = self.scripts.read.prepare_invoke();
            for position in &positions {
                invocation.key(self.stock_key(ShopId(shop), ids[*position]));
            }
            async move {
                let found: Vec<Option<i64>> = self.run(ShopId(shop), invocation).await?;
                PortResult::Ok(positions.into_iter().zip(found))
            }
        });
        let mut levels = vec![None; ids.len()];
        for (position, level) in futures_util::future::try_join_all(reads).await?.into_iter().flatten() {
            levels[position] = level;
        }
        // Below zero (see the module doc) sells nothing.
        Ok(levels.into_iter().map(|level| level.map(|n| n.max(0).unsigned_abs())).collect())
    }
}
