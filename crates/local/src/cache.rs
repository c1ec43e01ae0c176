//! [`LocalStockCache`]: the stock cache in process — the seed's Redis + Lua role, same semantics.
//!
//! One mutex guards all counters and tokens: a multi-commodity reservation checks every line, then
//! decrements all, with nothing in between, exactly like the seed's Lua script. Critical sections are
//! a few hash lookups (and, rarely, a sweep of the expiry queue: below); on two cores one lock beats
//! sharding (measured by `orderly bench`).
//! Tokens expire, by this process's steady clock (a step of the wall clock forgets nothing): past that, a
//! token is "missing", and every reader of a missing token re-reserves or releases, never assumes. A
//! RESERVED token gives its units back to the counter as it expires after `token_ttl_ms` (nobody will
//! consume it); a CLAIMED one does not expire — its create is on the bus and settles it however long the
//! backlog, so the accepted order consumes the units it was given. A RELEASED token (units given back, or
//! a refusal: a release or keep of a token the cache did not know, which an error answer's late create
//! must find refused) is remembered for `token_ttl_ms` too: a retry of its cart treats it as held. A
//! CONFIRMED token — every created order's, the bulk of what the cache remembers — is forgotten after
//! `settled_ttl_ms` (at least [`SETTLED_TTL_MIN_MS`]), and so is a restock's marker. Whoever reads them
//! later is told as much by the store: a redelivered create finds its order created, the counter counts
//! a deduction's or a restock's version once however late it comes, a keyed retry re-runs only the orders
//! not created yet. What reads a confirmation from the cache alone does so within seconds of it (an
//! entry's abort racing its own create, a duplicate delivery racing the first): the minute covers those.
//! Kept for an hour, they held one record per order of the last hour under load.
//!
//! It keeps the entry's reservation checks too (remark 1), armed by `reserve_checked` under the same lock
//! as the reservation: both live in this process, die with it, and are made again together by the
//! restart's load.
//!
//! A counter may go below zero: a lost reservation's deduction applied to a counter that sold the same
//! units again meanwhile (the store refuses those orders, and their release brings it back).
//!
//! A counter remembers which store versions it counts — all up to `counted_through`, and the few above
//! it that were reported out of order — so a change reported again is never counted twice, however late:
//! a create redelivered after its confirmed token expired, a restock after its marker expired.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderly_app::model::{Restock, StockChange, StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Held, PortResult, Reserve, StockCache};
use orderly_app::{Clock, PortError};
use orderly_domain::{CommodityId, ShopId};

#[derive(Debug)]
pub struct LocalStockCache {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    token_ttl_ms: u64,
    settled_ttl_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    stock: HashMap<CommodityId, Counter>,
    tokens: HashMap<Token, TokenRecord>,
    restocks_applied: HashSet<String>,
    /// Changes for counters not loaded yet: (store version, delta), applied by the load if newer.
    parked: HashMap<CommodityId, Vec<(u64, i64)>>,
    /// (expiry, what) of the open reservations (RESERVED, CLAIMED), after `token_ttl_ms`, in insertion
    /// order: the TTL is constant, so the front expires first. An entry is stale once its token settles
    /// (it is rewritten with another expiry, in another queue): within seconds, for most.
    expiries: VecDeque<(u64, Expiring)>,
    /// The same for what is kept `token_ttl_ms` once written — RELEASED tokens (refusals too) and parked
    /// changes —, apart, so that they do not hold the open reservations' stale entries behind them.
    kept_expiries: VecDeque<(u64, Expiring)>,
    /// The same after `settled_ttl_ms`: CONFIRMED tokens and restock markers.
    settled_expiries: VecDeque<(u64, Expiring)>,
    /// The reservation checks this cache keeps (remark 1), by when they are due, and each token's.
    checks: BTreeSet<(u64, Token)>,
    check_due: HashMap<Token, u64>,
}

#[derive(Debug)]
enum Expiring {
    Token(Token),
    Restock(String),
    Parked(CommodityId, u64),
}

#[derive(Debug, Clone)]
struct Counter {
    available: i64,
    /// Every store change up to this version is counted (at load: the version read).
    counted_through: u64,
    /// Versions above `counted_through` counted already; they fold into it as the gaps below them fill.
    counted: BTreeSet<u64>,
}

impl Counter {
    fn loaded(available: i64, version: u64) -> Counter {
        Counter { available, counted_through: version, counted: BTreeSet::new() }
    }

    /// Whether the store change at `version` is news to this counter; from now on it is counted.
    fn count(&mut self, version: u64) -> bool {
        if version <= self.counted_through || !self.counted.insert(version) {
            return false;
        }
        while self.counted.remove(&(self.counted_through + 1)) {
            self.counted_through += 1;
        }
        true
    }
}

#[derive(Debug, Clone)]
struct TokenRecord {
    state: TokenState,
    /// What it holds while RESERVED or CLAIMED; nothing once settled (its lines are never read again).
    lines: Vec<(CommodityId, u32)>,
    expires_ms: u64,
}

/// When what is written now expires: `open` after `token_ttl_ms`, `settled` after `settled_ttl_ms`.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    open: u64,
    settled: u64,
}

/// The stale entries the open reservations' expiry queue may hold before it is swept of them whole,
/// beyond twice the records it stands for: a sweep is then paid for by as many pushes as it reads. Stale
/// entries at its front are dropped as they come; this is for those stuck behind a reservation held open
/// for long (a create waiting in a long backlog).
const STALE_ENTRIES_SWEPT_AT: usize = 4_096;

/// The least `settled_ttl_ms`: far above the seconds within which a confirmation is read from the cache
/// alone.
pub const SETTLED_TTL_MIN_MS: u64 = 60_000;

impl LocalStockCache {
    /// `token_ttl_ms`: how long a RESERVED token holds its units unclaimed and a RELEASED one is
    /// remembered; `settled_ttl_ms`: how long a CONFIRMED one and a restock's marker are — at least
    /// [`SETTLED_TTL_MIN_MS`], at most `token_ttl_ms`.
    /// (`token_ttl_ms` at least 1 ms: a CLAIMED token is re-armed that far ahead.)
    pub fn new(clock: Arc<dyn Clock>, token_ttl_ms: u64, settled_ttl_ms: u64) -> LocalStockCache {
        let token_ttl_ms = token_ttl_ms.max(1);
        let settled_ttl_ms = settled_ttl_ms.max(SETTLED_TTL_MIN_MS).min(token_ttl_ms);
        LocalStockCache { inner: Mutex::new(Inner::default()), clock, token_ttl_ms, settled_ttl_ms }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner, u64, Expiry) -> T) -> PortResult<T> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| PortError::failed("stock cache", "lock poisoned: a holder panicked mid-change"))?;
        // Read under the lock: each queue's entries then go in the order of their expiries.
        let now_ms = self.clock.steady_ms();
        let expiry = Expiry {
            open: now_ms.saturating_add(self.token_ttl_ms),
            settled: now_ms.saturating_add(self.settled_ttl_ms),
        };
        inner.expire(now_ms, expiry.open);
        let result = f(&mut inner, now_ms, expiry);
        inner.sweep_stale();
        Ok(result)
    }

    /// Records the cache holds (tokens, restock markers, parked changes) and the entries of its expiry
    /// queues: what its memory grows with.
    pub fn held(&self) -> PortResult<(usize, usize)> {
        self.with(|inner, _, _| {
            let records =
                inner.tokens.len() + inner.restocks_applied.len() + inner.parked.values().map(Vec::len).sum::<usize>();
            (records, inner.expiries.len() + inner.kept_expiries.len() + inner.settled_expiries.len())
        })
    }
}

/// The front of `queue` if it is due by `now_ms`.
fn pop_due(queue: &mut VecDeque<(u64, Expiring)>, now_ms: u64) -> Option<Expiring> {
    if queue.front().is_some_and(|(expires_ms, _)| *expires_ms <= now_ms) {
        return queue.pop_front().map(|(_, what)| what);
    }
    None
}

impl Inner {
    /// Forgets what has expired by `now_ms`; a token still owed to a create is kept until `rearm_ms`.
    /// Stale entries at the open reservations' queue's front go too (a token settled since its reserve
    /// pushed it).
    fn expire(&mut self, now_ms: u64, rearm_ms: u64) {
        while let Some(what) = pop_due(&mut self.expiries, now_ms) {
            self.forget(what, now_ms, rearm_ms);
        }
        while self.expiries.front().is_some_and(|(expires_ms, what)| self.stale(*expires_ms, what)) {
            self.expiries.pop_front();
        }
        while let Some(what) = pop_due(&mut self.kept_expiries, now_ms) {
            self.forget(what, now_ms, rearm_ms);
        }
        while let Some(what) = pop_due(&mut self.settled_expiries, now_ms) {
            self.forget(what, now_ms, rearm_ms);
        }
    }

    /// Drops the stale entries of the open reservations' queue (a settled token leaves its reserve's
    /// behind), once there are many more entries than records: so the queue holds at most about twice the
    /// records, not one entry per order of the last `token_ttl_ms`, even behind a reservation held open
    /// for long at its front.
    fn sweep_stale(&mut self) {
        let records = self.tokens.len() + self.parked.values().map(Vec::len).sum::<usize>();
        if self.expiries.len() <= 2 * records + STALE_ENTRIES_SWEPT_AT {
            return;
        }
        let mut expiries = std::mem::take(&mut self.expiries);
        expiries.retain(|(expires_ms, what)| !self.stale(*expires_ms, what));
        self.expiries = expiries;
    }

    /// An entry of the long queue that no longer stands for its record: a token rewritten (settled, or
    /// re-armed) with another expiry since, or forgotten.
    fn stale(&self, expires_ms: u64, what: &Expiring) -> bool {
        match what {
            Expiring::Token(token) => self.tokens.get(token).is_none_or(|t| t.expires_ms != expires_ms),
            Expiring::Restock(_) | Expiring::Parked(..) => false,
        }
    }

    /// One expired entry: its record is forgotten unless it was rewritten with a later expiry since.
    fn forget(&mut self, what: Expiring, now_ms: u64, rearm_ms: u64) {
        match what {
            // Only if not rewritten since: a rewrite pushed a later expiry.
            Expiring::Token(token) => match self.tokens.get(&token) {
                Some(t) if t.expires_ms <= now_ms => match t.state {
                    // Its create is on the bus and settles it (confirm or release), however long
                    // the backlog: kept, so the accepted order still consumes the units it holds.
                    TokenState::Claimed => {
                        let lines = t.lines.clone();
                        self.set_token(token, TokenState::Claimed, lines, rearm_ms);
                    }
                    // Nobody will consume it: its units go back to the counter as it goes.
                    TokenState::Reserved => {
                        let lines = t.lines.clone();
                        self.give_back(&lines);
                        self.tokens.remove(&token);
                    }
                    TokenState::Confirmed | TokenState::Released => {
                        self.tokens.remove(&token);
                    }
                },
                _ => {}
            },
            Expiring::Restock(key) => {
                self.restocks_applied.remove(&key);
            }
            Expiring::Parked(id, version) => {
                if let Some(parked) = self.parked.get_mut(&id) {
                    parked.retain(|(v, _)| *v != version);
                    if parked.is_empty() {
                        self.parked.remove(&id);
                    }
                }
            }
        }
    }

    /// Arms (or moves) `token`'s reservation check to `at_ms`.
    fn arm_check(&mut self, token: Token, at_ms: u64) {
        if let Some(was_ms) = self.check_due.insert(token, at_ms) {
            self.checks.remove(&(was_ms, token));
        }
        self.checks.insert((at_ms, token));
    }

    fn disarm_check(&mut self, token: Token) {
        if let Some(was_ms) = self.check_due.remove(&token) {
            self.checks.remove(&(was_ms, token));
        }
    }

    /// All lines or none; checks every line first, then writes: no rollback needed (the Lua rule).
    fn reserve(&mut self, token: Token, lines: &[(CommodityId, u32)], state: TokenState, expires_ms: u64) -> Reserve {
        if let Some(existing) = self.tokens.get(&token) {
            return Reserve::AlreadyHeld(existing.state);
        }
        let missing: Vec<CommodityId> =
            lines.iter().map(|(id, _)| *id).filter(|id| !self.stock.contains_key(id)).collect();
        if !missing.is_empty() {
            return Reserve::NotLoaded(missing);
        }
        for (id, quantity) in lines {
            let available = self.stock.get(id).map_or(0, |c| c.available);
            if available < i64::from(*quantity) {
                return Reserve::Insufficient { commodity_id: *id, available: available.max(0).unsigned_abs() };
            }
        }
        for (id, quantity) in lines {
            if let Some(counter) = self.stock.get_mut(id) {
                counter.available -= i64::from(*quantity);
            }
        }
        self.set_token(token, state, lines.to_vec(), expires_ms);
        Reserve::Reserved
    }

    /// A token open (RESERVED, CLAIMED) or RELEASED, until `expires_ms` (`token_ttl_ms` from now).
    fn set_token(&mut self, token: Token, state: TokenState, lines: Vec<(CommodityId, u32)>, expires_ms: u64) {
        self.tokens.insert(token, TokenRecord { state, lines, expires_ms });
        let queue = if state == TokenState::Released { &mut self.kept_expiries } else { &mut self.expiries };
        queue.push_back((expires_ms, Expiring::Token(token)));
    }

    /// A reservation CONFIRMED: remembered without its lines until `expires_ms` (`settled_ttl_ms` from
    /// now).
    fn confirm_token(&mut self, token: Token, expires_ms: u64) {
        self.tokens.insert(token, TokenRecord { state: TokenState::Confirmed, lines: Vec::new(), expires_ms });
        self.settled_expiries.push_back((expires_ms, Expiring::Token(token)));
    }

    fn give_back(&mut self, lines: &[(CommodityId, u32)]) {
        for (id, quantity) in lines {
            if let Some(counter) = self.stock.get_mut(id) {
                counter.available += i64::from(*quantity);
            }
        }
    }

    /// A store change the counter may not count yet: applied once if it does not, kept for its load if
    /// it is not loaded (until `expires_ms`).
    fn follow(&mut self, (id, quantity, version): StockChange, sign: i64, expires_ms: u64) {
        let delta = sign * i64::from(quantity);
        match self.stock.get_mut(&id) {
            Some(counter) => {
                if counter.count(version) {
                    counter.available += delta;
                }
            }
            None => {
                self.parked.entry(id).or_default().push((version, delta));
                self.kept_expiries.push_back((expires_ms, Expiring::Parked(id, version)));
            }
        }
    }

    /// Releases from the states `from` allows; unknown tokens are remembered as RELEASED (a refusal).
    /// Either is remembered for `token_ttl_ms`.
    fn release(&mut self, token: Token, expiry: Expiry, allowed: &[TokenState]) -> Option<TokenState> {
        match self.tokens.get_mut(&token) {
            Some(record) if allowed.contains(&record.state) => {
                let (state, lines) = (record.state, std::mem::take(&mut record.lines));
                self.give_back(&lines);
                self.set_token(token, TokenState::Released, Vec::new(), expiry.open);
                Some(state)
            }
            Some(record) => Some(record.state),
            None => {
                self.set_token(token, TokenState::Released, Vec::new(), expiry.open);
                None
            }
        }
    }
}

#[async_trait]
impl StockCache for LocalStockCache {
    async fn init(&self, levels: &[(CommodityId, StockLevel)], held: &[Held]) -> PortResult<()> {
        self.with(|inner, _, expiry| {
            let mut loaded = HashSet::new();
            for (id, level) in levels {
                if inner.stock.contains_key(id) {
                    continue;
                }
                let mut counter = Counter::loaded(i64::try_from(level.available).unwrap_or(i64::MAX), level.version);
                for (version, delta) in inner.parked.remove(id).unwrap_or_default() {
                    if counter.count(version) {
                        counter.available = counter.available.saturating_add(delta);
                    }
                }
                inner.stock.insert(*id, counter);
                loaded.insert(*id);
            }
            for held in held {
                if inner.tokens.contains_key(&held.token) || !held.lines.iter().all(|(id, _)| loaded.contains(id)) {
                    continue;
                }
                for (id, quantity) in &held.lines {
                    if let Some(counter) = inner.stock.get_mut(id) {
                        counter.available -= i64::from(*quantity);
                    }
                }
                inner.set_token(held.token, TokenState::Reserved, held.lines.clone(), expiry.open);
                if let Some(check_at_ms) = held.check_at_ms {
                    inner.arm_check(held.token, check_at_ms);
                }
            }
        })
    }

    async fn reserve(&self, token: Token, lines: &[(CommodityId, u32)], claimed: bool) -> PortResult<Reserve> {
        let state = if claimed { TokenState::Claimed } else { TokenState::Reserved };
        self.with(|inner, _, expiry| inner.reserve(token, lines, state, expiry.open))
    }

    /// The checks live in this process, as the reservations do: a crash loses both, and the restart's
    /// load makes both again from the pending views.
    fn keeps_checks(&self) -> bool {
        true
    }

    async fn reserve_checked(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        check_at_ms: u64,
    ) -> PortResult<Reserve> {
        self.with(|inner, _, expiry| {
            let reserved = inner.reserve(token, lines, TokenState::Reserved, expiry.open);
            if reserved == Reserve::Reserved {
                inner.arm_check(token, check_at_ms);
            }
            reserved
        })
    }

    async fn due_checks(&self, shops: &[ShopId], now_ms: u64, retry_at_ms: u64, max: usize) -> PortResult<Vec<Token>> {
        let shops: HashSet<ShopId> = shops.iter().copied().collect();
        self.with(|inner, _, _| {
            let due: Vec<Token> = inner
                .checks
                .iter()
                .take_while(|(at_ms, _)| *at_ms <= now_ms)
                .filter(|(_, token)| shops.contains(&token.shop_id))
                .take(max)
                .map(|(_, token)| *token)
                .collect();
            for token in &due {
                inner.arm_check(*token, retry_at_ms);
            }
            due
        })
    }

    async fn checks_done(&self, tokens: &[Token], handed_out_at_ms: u64) -> PortResult<()> {
        self.with(|inner, _, _| {
            for token in tokens {
                if inner.check_due.get(token) == Some(&handed_out_at_ms) {
                    inner.disarm_check(*token);
                }
            }
        })
    }

    async fn checks_armed(&self, shops: &[ShopId]) -> PortResult<usize> {
        let shops: HashSet<ShopId> = shops.iter().copied().collect();
        self.with(|inner, _, _| inner.check_due.keys().filter(|token| shops.contains(&token.shop_id)).count())
    }

    async fn claim(&self, token: Token) -> PortResult<Claim> {
        self.with(|inner, _, _| match inner.tokens.get_mut(&token) {
            None => Claim::Missing,
            Some(record) => match record.state {
                TokenState::Reserved | TokenState::Claimed => {
                    record.state = TokenState::Claimed;
                    Claim::Claimed
                }
                TokenState::Confirmed => Claim::Confirmed,
                TokenState::Released => Claim::Released,
            },
        })
    }

    async fn confirm(&self, token: Token, deductions: &[StockChange]) -> PortResult<()> {
        self.with(|inner, _, expiry| {
            // Settled: its check would find the order created and settle it again.
            inner.disarm_check(token);
            let lost = match inner.tokens.get(&token) {
                Some(record) if matches!(record.state, TokenState::Reserved | TokenState::Claimed) => {
                    inner.confirm_token(token, expiry.settled);
                    // Counted when it reserved: its versions are, from now on, by the counter itself.
                    for (id, _, version) in deductions {
                        if let Some(counter) = inner.stock.get_mut(id) {
                            counter.count(*version);
                        }
                    }
                    false
                }
                // Given back (its units returned) or never known: the store's deduction is followed.
                Some(record) => record.state == TokenState::Released,
                None => true,
            };
            if lost && !deductions.is_empty() {
                for change in deductions {
                    inner.follow(*change, -1, expiry.open);
                }
                inner.confirm_token(token, expiry.settled);
            }
        })
    }

    async fn release(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.with(|inner, _, expiry| inner.release(token, expiry, &[TokenState::Reserved, TokenState::Claimed]))
    }

    async fn release_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.with(|inner, _, expiry| inner.release(token, expiry, &[TokenState::Reserved]))
    }

    async fn keep_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.with(|inner, _, expiry| {
            let Some(record) = inner.tokens.get_mut(&token) else {
                // Remembered as an empty rollback: no reservation is made for it afterwards.
                inner.set_token(token, TokenState::Released, Vec::new(), expiry.open);
                return None;
            };
            let found = record.state;
            if found == TokenState::Reserved {
                // Kept: a claimed token outlives its expiry until its create settles it.
                record.state = TokenState::Claimed;
            }
            Some(found)
        })
    }

    async fn restock(&self, restock: &Restock) -> PortResult<()> {
        self.with(|inner, _, expiry| {
            if !inner.restocks_applied.insert(restock.key.clone()) {
                return;
            }
            // Its lines' versions keep it from counting twice however late it comes again; the marker
            // only saves the work of looking.
            inner.settled_expiries.push_back((expiry.settled, Expiring::Restock(restock.key.clone())));
            for change in &restock.lines {
                inner.follow(*change, 1, expiry.open);
            }
        })
    }

    async fn available(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<u64>>> {
        self.with(|inner, _, _| {
            ids.iter().map(|id| inner.stock.get(id).map(|c| c.available.max(0).unsigned_abs())).collect()
        })
    }
}
