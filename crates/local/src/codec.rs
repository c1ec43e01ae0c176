//! How the embedded database writes its records and bus messages: a format byte, then the value.
//!
//! - Format 1 (since 2026-12-06): [postcard](https://postcard.jamesmunns.com), serde's compact binary
//!   form — fields by position, integers as varints, no names. Amounts go as cents and order numbers as
//!   two integers (their `Serialize` asks `is_human_readable`).
//! - Format 0: JSON, what earlier builds wrote, with no format byte (a value that starts with `{`, `[`
//!   or `"`). Still read, so a data directory of an earlier build opens as it is; a record is written
//!   again in format 1 by its next change.
//!
//! A value whose first byte names a format this build does not know (a later build's), or with bytes
//! past its end, is refused. Postcard reads fields and enum variants by position: a change to a stored
//! type (a field or variant added, removed or reordered) needs a new format number and a reader for the
//! old one. The tests `the_formats_bytes_are_pinned` and `every_stored_type_and_variant_is_pinned` hold
//! the bytes of one value of every stored type and every variant, and fail on such a change. The
//! upgrade is one way: a build before format 1 cannot read a record written in it.

use orderly_app::PortError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::LocalError;

/// The format this build writes.
const POSTCARD: u8 = 1;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PortError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(POSTCARD);
    postcard::to_io(value, &mut bytes).map_err(|e| LocalError::Unencodable(e.to_string()))?;
    Ok(bytes)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PortError> {
    let undecodable = |e: &dyn std::fmt::Display| PortError::from(LocalError::Undecodable(e.to_string()));
    match bytes.first() {
        Some(&POSTCARD) => match postcard::take_from_bytes(&bytes[1..]) {
            Ok((value, [])) => Ok(value),
            // More than this build's type holds: a later build's field, written without a new format.
            Ok((_, rest)) => Err(undecodable(&format_args!("{} more bytes than this build reads", rest.len()))),
            Err(e) => Err(undecodable(&e)),
        },
        Some(b'{' | b'[' | b'"') => serde_json::from_slice(bytes).map_err(|e| undecodable(&e)),
        Some(&format) => Err(LocalError::UnknownFormat(format).into()),
        None => Err(undecodable(&"an empty value")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use orderly_app::Bus;
    use orderly_app::model::{
        IdempotencyRecord, Message, Order, OutboxEvent, PaymentAttempt, Restock, StockLevel, StoredAnswer, Token, Topic,
    };
    use orderly_app::ports::{OrderChange, Store};
    use orderly_app::time::ManualClock;
    use orderly_domain::{
        CatalogEntry, CommodityId, Money, OrderAction, OrderLine, OrderNo, OrderState, ShopId, SnowflakeId, Uid,
    };
    use orderly_ledger::{CaptureOutcome, CaptureRecord, LedgerEntry, LedgerState};

    use super::*;
    use crate::db::u64_key;
    use crate::{Durability, LocalBus, LocalDb, LocalStore};

    const NO: OrderNo = OrderNo { id: SnowflakeId(1_234_567_890), buyer_shard: 7 };

    /// An order with every field set.
    fn full_order() -> Order {
        Order {
            order_no: NO,
            buyer: Uid(7),
            to_uid: Uid(8),
            shop_id: ShopId(100_001),
            pay_at_once: true,
            lines: vec![
                OrderLine { commodity_id: CommodityId(1), quantity: 2, unit_price: Money::from_cents(2999) },
                OrderLine { commodity_id: CommodityId(2), quantity: 1, unit_price: Money::from_cents(4999) },
            ],
            total: Money::from_cents(10_997),
            state: OrderState::Paid,
            created_ms: 1_000,
            updated_ms: 2_000,
            payment_attempt: Some(PaymentAttempt { started_ms: 1_500, charge_deadline_ms: 31_500 }),
            payment_id: Some("pay-1".to_owned()),
            last_decline: Some("insufficient funds".to_owned()),
            rejected_for: Some(CommodityId(2)),
            token_generation: Some(1),
            stock_versions: vec![3, 9],
            trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = encode(&value).expect("encodes");
        assert_eq!(bytes[0], POSTCARD);
        let json = serde_json::to_vec(&value).expect("json");
        assert!(bytes.len() < json.len(), "{} bytes against {} of JSON: {value:?}", bytes.len(), json.len());
        assert_eq!(decode::<T>(&bytes).expect("decodes"), value);
    }

    #[test]
    fn every_stored_kind_round_trips_in_the_binary_format() {
        let order = full_order();
        round_trip(order.clone());
        round_trip(Order { stock_versions: Vec::new(), trace: None, payment_attempt: None, ..order.clone() });
        round_trip(StockLevel { shop_id: ShopId(100_001), initial: 10, available: 7, version: 4 });
        round_trip(CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(9), unit_price: Money::from_cents(1) });
        let restock = Restock { key: "cancel:1".to_owned(), shop_id: ShopId(9), lines: vec![(CommodityId(1), 2, 5)] };
        round_trip(OutboxEvent::RestockCache(restock));
        round_trip(OutboxEvent::ScheduleUnpaidTimeout { order_no: NO, at_ms: 900_000 });
        round_trip(IdempotencyRecord {
            request: r#"{"uid":7}"#.to_owned(),
            order_nos: vec![NO],
            answer: Some(StoredAnswer::SoldOut { commodity_id: CommodityId(2) }),
        });
        round_trip(LedgerEntry {
            amount: Money::from_cents(10_997),
            idempotency_key: "charge:1".to_owned(),
            state: LedgerState::Succeeded { payment_id: "pay-1".to_owned() },
            processing_until_ms: 5,
            refunds: vec![("refund:1".to_owned(), Money::from_cents(2999))],
        });
        round_trip(CaptureRecord { order_no: NO, amount: Money::from_cents(1), outcome: CaptureOutcome::default() });
        for message in [
            Message::CreateOrder(Box::new(order)),
            Message::ReservationCheck { token: Token::worker(NO, ShopId(9)) },
            Message::UnpaidTimeout { order_no: NO },
            Message::Charge { order_no: NO },
        ] {
            round_trip(crate::bus::Stored { message, retries: 2 });
        }
    }

    /// What builds before format 1 wrote: JSON, without the fields an order leaves out when empty.
    const EARLIER_ORDER: &str = r#"{"order_no":"12345678900007","buyer":7,"to_uid":7,"shop_id":100001,"pay_at_once":false,"lines":[{"commodity_id":1,"quantity":2,"unit_price":29.99}],"total":59.98,"state":"to_pay","created_ms":1000,"updated_ms":1000,"payment_attempt":null,"payment_id":null,"last_decline":null,"rejected_for":null,"token_generation":0}"#;
    const EARLIER_STOCK: &str = r#"{"shop_id":100001,"initial":10,"available":8,"version":2}"#;
    const EARLIER_CATALOG: &str = r#"{"commodity_id":1,"shop_id":100001,"unit_price":29.99}"#;
    const EARLIER_MESSAGE: &str = r#"{"message":{"unpaid_timeout":{"order_no":"12345678900007"}},"retries":0}"#;

    fn earlier_order() -> Order {
        Order {
            order_no: NO,
            buyer: Uid(7),
            to_uid: Uid(7),
            shop_id: ShopId(100_001),
            pay_at_once: false,
            lines: vec![OrderLine { commodity_id: CommodityId(1), quantity: 2, unit_price: Money::from_cents(2999) }],
            total: Money::from_cents(5998),
            state: OrderState::ToPay,
            created_ms: 1_000,
            updated_ms: 1_000,
            payment_attempt: None,
            payment_id: None,
            last_decline: None,
            rejected_for: None,
            token_generation: Some(0),
            stock_versions: Vec::new(),
            trace: None,
        }
    }

    #[test]
    fn an_earlier_builds_json_is_still_read() {
        assert_eq!(decode::<Order>(EARLIER_ORDER.as_bytes()).expect("order"), earlier_order());
        let level: StockLevel = decode(EARLIER_STOCK.as_bytes()).expect("stock");
        assert_eq!(level, StockLevel { shop_id: ShopId(100_001), initial: 10, available: 8, version: 2 });
        let stored: crate::bus::Stored = decode(EARLIER_MESSAGE.as_bytes()).expect("message");
        assert_eq!(stored.message, Message::UnpaidTimeout { order_no: NO });
    }

    #[test]
    fn a_later_format_is_refused_by_its_number() {
        let error = decode::<StockLevel>(&[2, 1, 2, 3]).expect_err("format 2 is not known");
        assert!(error.to_string().contains("format 2"), "{error}");
        assert!(decode::<StockLevel>(&[]).is_err());
        // An order number's shard has four digits, as its text does.
        let shard_too_large = encode(&(1u64, 10_000u16)).expect("encodes");
        assert!(decode::<OrderNo>(&shard_too_large).is_err());
        assert_eq!(
            decode::<OrderNo>(&encode(&(1u64, 9_999u16)).expect("encodes")).ok(),
            Some(OrderNo { id: SnowflakeId(1), buyer_shard: 9_999 })
        );
        // A truncated record is undecodable, not a default; one with bytes past its end (a later
        // build's field) is refused, not read without them.
        let bytes = encode(&full_order()).expect("encodes");
        assert!(decode::<Order>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        let error = decode::<Order>(&longer).expect_err("a byte past the end");
        assert!(error.to_string().contains("1 more bytes than this build reads"), "{error}");
        assert_eq!(decode::<Order>(&bytes).ok(), Some(full_order()));
        // Amounts keep their bounds in the binary format too.
        assert!(decode::<Money>(&encode(&-1i64).expect("encodes")).is_err());
        assert!(decode::<Money>(&encode(&(orderly_domain::MONEY_CENTS_MAX + 1)).expect("encodes")).is_err());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Postcard reads fields by position: this fails when a stored type's fields change, which needs a
    /// new format number (and a reader of format 1) rather than a new expected value here.
    #[test]
    fn the_formats_bytes_are_pinned() {
        let fields = [
            ("format", "01"),
            ("order number: id, shard", "d285d8cc0407"),
            ("buyer, to_uid, shop, pay at once", "0708a18d0601"),
            ("two lines: commodity, quantity, cents (zigzag)", "020102ee2e02018e4e"),
            ("total, state (paid), created, updated", "eaab0102e807d00f"),
            ("payment attempt", "01dc0b8cf601"),
            ("payment id", "01057061792d31"),
            ("last decline", "0112696e73756666696369656e742066756e6473"),
            ("rejected for, token generation, stock versions", "01020101020309"),
            ("trace", "0137"),
            ("trace", "30302d30616637363531393136636434336464383434386562323131633830333139632d62376164"),
            ("trace", "3662373136393230333333312d3031"),
        ];
        let expected: String = fields.iter().map(|(_, bytes)| *bytes).collect();
        assert_eq!(hex(&encode(&full_order()).expect("encodes")), expected);
    }

    /// One value of every other stored type and every variant of the enums they hold, as bytes: a
    /// variant added in the middle, or a field anywhere, changes a line here.
    #[test]
    fn every_stored_type_and_variant_is_pinned() {
        let order = |state| Order { state, ..earlier_order() };
        let ledger = |state| LedgerEntry {
            amount: Money::from_cents(5998),
            idempotency_key: "k".to_owned(),
            state,
            processing_until_ms: 9,
            refunds: vec![("r".to_owned(), Money::from_cents(1))],
        };
        let capture = |outcome| CaptureRecord { order_no: NO, amount: Money::from_cents(1), outcome };
        let stored = |message| crate::bus::Stored { message, retries: 1 };
        let idempotency = |answer| IdempotencyRecord { request: "{}".to_owned(), order_nos: vec![NO], answer };
        let restock = Restock { key: "k".to_owned(), shop_id: ShopId(9), lines: vec![(CommodityId(1), 2, 3)] };
        let dead = |topic| crate::bus::DeadLetter {
            topic,
            message: Message::Charge { order_no: NO },
            reason: "r".to_owned(),
            at_ms: 5,
        };
        let mut encoded: Vec<(&str, String)> = Vec::new();
        let mut put = |name, bytes: Result<Vec<u8>, PortError>| encoded.push((name, hex(&bytes.expect("encodes"))));
        for (name, state) in [
            ("order pending", OrderState::Pending),
            ("order to_pay", OrderState::ToPay),
            ("order paid", OrderState::Paid),
            ("order cancelled", OrderState::Cancelled),
            ("order closed", OrderState::Closed),
            ("order rejected", OrderState::Rejected),
        ] {
            put(name, encode(&order(state)));
        }
        put("stock", encode(&StockLevel { shop_id: ShopId(9), initial: 10, available: 7, version: 4 }));
        put(
            "catalog",
            encode(&CatalogEntry {
                commodity_id: CommodityId(1),
                shop_id: ShopId(9),
                unit_price: Money::from_cents(2999),
            }),
        );
        put("outbox restock", encode(&OutboxEvent::RestockCache(restock)));
        put("outbox timeout", encode(&OutboxEvent::ScheduleUnpaidTimeout { order_no: NO, at_ms: 7 }));
        put("outbox charge", encode(&OutboxEvent::Charge { order_no: NO }));
        put("idempotency open", encode(&idempotency(None)));
        put("idempotency accepted", encode(&idempotency(Some(StoredAnswer::Accepted))));
        put("idempotency sold out", encode(&idempotency(Some(StoredAnswer::SoldOut { commodity_id: CommodityId(2) }))));
        put("ledger processing", encode(&ledger(LedgerState::Processing)));
        put("ledger succeeded", encode(&ledger(LedgerState::Succeeded { payment_id: "p".to_owned() })));
        put("ledger declined", encode(&ledger(LedgerState::Declined { reason: "d".to_owned() })));
        put("capture captured", encode(&capture(CaptureOutcome::Captured)));
        put("capture declined", encode(&capture(CaptureOutcome::Declined { reason: "d".to_owned() })));
        put("capture voided", encode(&capture(CaptureOutcome::Voided)));
        put("message create", encode(&stored(Message::CreateOrder(Box::new(earlier_order())))));
        put("message check", encode(&stored(Message::ReservationCheck { token: Token::worker(NO, ShopId(9)) })));
        put("message timeout", encode(&stored(Message::UnpaidTimeout { order_no: NO })));
        put("message charge", encode(&stored(Message::Charge { order_no: NO })));
        for (name, topic) in [
            ("dead letter create", Topic::CreateOrder),
            ("dead letter check", Topic::ReservationCheck),
            ("dead letter timeout", Topic::UnpaidTimeout),
            ("dead letter charge", Topic::Charge),
        ] {
            put(name, encode(&dead(topic)));
        }
        let expected: &[(&str, &str)] = &[
            ("order pending", "01d285d8cc04070707a18d0600010102ee2edc5d00e807e8070000000001000000"),
            ("order to_pay", "01d285d8cc04070707a18d0600010102ee2edc5d01e807e8070000000001000000"),
            ("order paid", "01d285d8cc04070707a18d0600010102ee2edc5d02e807e8070000000001000000"),
            ("order cancelled", "01d285d8cc04070707a18d0600010102ee2edc5d03e807e8070000000001000000"),
            ("order closed", "01d285d8cc04070707a18d0600010102ee2edc5d04e807e8070000000001000000"),
            ("order rejected", "01d285d8cc04070707a18d0600010102ee2edc5d05e807e8070000000001000000"),
            ("stock", "01090a0704"),
            ("catalog", "010109ee2e"),
            ("outbox restock", "0100016b0901010203"),
            ("outbox timeout", "0101d285d8cc040707"),
            ("outbox charge", "0102d285d8cc0407"),
            ("idempotency open", "01027b7d01d285d8cc040700"),
            ("idempotency accepted", "01027b7d01d285d8cc04070100"),
            ("idempotency sold out", "01027b7d01d285d8cc0407010102"),
            ("ledger processing", "01dc5d016b000901017202"),
            ("ledger succeeded", "01dc5d016b0101700901017202"),
            ("ledger declined", "01dc5d016b0201640901017202"),
            ("capture captured", "01d285d8cc04070200"),
            ("capture declined", "01d285d8cc040702010164"),
            ("capture voided", "01d285d8cc04070202"),
            ("message create", "0100d285d8cc04070707a18d0600010102ee2edc5d01e807e807000000000100000001"),
            ("message check", "0101d285d8cc0407090101"),
            ("message timeout", "0102d285d8cc040701"),
            ("message charge", "0103d285d8cc040701"),
            ("dead letter create", "010003d285d8cc0407017205"),
            ("dead letter check", "010103d285d8cc0407017205"),
            ("dead letter timeout", "010203d285d8cc0407017205"),
            ("dead letter charge", "010303d285d8cc0407017205"),
        ];
        assert_eq!(encoded, expected.iter().map(|(n, h)| (*n, (*h).to_owned())).collect::<Vec<_>>());
    }

    /// A data directory an earlier build wrote (JSON records and messages) opens: its order is read,
    /// changed (and written again in format 1), and its queued message delivered.
    #[tokio::test]
    async fn a_data_directory_of_an_earlier_build_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
        db.catalog.insert(u64_key(1), EARLIER_CATALOG).expect("catalog");
        db.stock.insert(u64_key(1), EARLIER_STOCK).expect("stock");
        db.orders.insert(NO.to_key(), EARLIER_ORDER).expect("order");
        let mut buyer_key = 7u64.to_be_bytes().to_vec();
        buyer_key.extend_from_slice(&NO.to_key());
        db.orders_by_buyer.insert(buyer_key, []).expect("index");
        let mut message_key = vec![3u8];
        message_key.extend_from_slice(&0u64.to_be_bytes());
        message_key.extend_from_slice(&1u64.to_be_bytes());
        db.bus.insert(message_key, EARLIER_MESSAGE).expect("message");

        let clock = Arc::new(ManualClock::new(10_000));
        let bus = Arc::new(LocalBus::new(db.clone(), clock, 30_000).expect("bus"));
        let store = LocalStore::with_bus(db.clone(), Arc::clone(&bus)).expect("store");
        assert_eq!(store.order(NO).await.expect("read"), Some(earlier_order()));
        assert_eq!(store.orders_of(Uid(7), None, 10).await.expect("buyer's"), vec![earlier_order()]);
        assert_eq!(
            store.commodity(CommodityId(1)).await.expect("catalog").map(|e| e.unit_price),
            Some(Money::from_cents(2999))
        );

        let cancelled = store
            .change_order(NO, OrderChange::Action(OrderAction::Cancel), 10_000)
            .await
            .expect("change")
            .expect("allowed");
        assert_eq!(cancelled.state, OrderState::Cancelled);
        let level = store.stock(&[CommodityId(1)]).await.expect("stock")[0].expect("level");
        assert_eq!((level.available, level.version), (10, 3));
        let rewritten = db.orders.get(NO.to_key()).expect("get").expect("present");
        assert_eq!(rewritten[0], POSTCARD);
        assert_eq!(store.order(NO).await.expect("read"), Some(cancelled));

        let deliveries = bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive");
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].message, Message::UnpaidTimeout { order_no: NO });
    }
}
