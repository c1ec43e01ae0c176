//! Contract suites: what every adapter of a port must do, written once and run against each adapter
//! (TiKV's engine tests, in spirit). An adapter crate instantiates a suite in one line of its tests:
//!
//! ```ignore
//! orderly_contract::stock_cache_contract!(|| async { Arc::new(MyCache::new()) as Arc<dyn StockCache> });
//! ```
//!
//! The factory is called once per case and must return a fresh, empty adapter.
//!
//! # Layout
//! - [`bus`]: delivery, acks, retries with attempt counts, delays, dead letters, topics, depth.
//! - [`store`]: catalog and ledger, batched create, transitions, payment attempts, outbox, idempotency.
//! - [`holdings`]: the gate of the buyer's caps — one step per cart, racing carts, lately admitted
//!   orders and the store's word, withdrawals, retries.
//! - [`payments`]: the payment ledger over a pair of books — atomic steps under racing retries and
//!   attempts, first writer wins at the acquirer, leases, refunds.
//! - [`registry`]: members under leases, a silent participant gone within the TTL, unique worker ids,
//!   settings that reach every participant.
//! - [`stock_cache`]: the reservation token lifecycle, all-or-nothing reserve, empty rollback, hanging
//!   reserve, versioned restock, init-if-absent, and a race for the last units.

pub mod bus;
pub mod holdings;
pub mod payments;
pub mod registry;
pub mod stock_cache;
pub mod store;

pub use bus::{BusFixture, OnABroker};
pub use orderly_app::{Holdings, StockCache, Store};
pub use registry::RegistryFixture;

/// One `#[tokio::test]` per case of [`stock_cache`], each on a fresh adapter from `$factory`.
#[macro_export]
macro_rules! stock_cache_contract {
    ($factory:expr) => {
        $crate::stock_cache_contract!(@cases $factory;
            init_sets_only_absent_levels,
            reserve_is_all_or_nothing,
            reserve_of_an_unloaded_commodity_changes_nothing,
            reserve_is_idempotent_per_token,
            token_moves_reserved_claimed_confirmed,
            release_returns_stock_exactly_once,
            release_of_an_unknown_token_is_an_empty_rollback_and_blocks_a_late_reserve,
            release_if_reserved_leaves_a_claimed_token_to_its_worker,
            a_claimed_reservation_starts_claimed,
            restock_counts_once_per_key_and_skips_loaded_versions,
            restock_of_an_unloaded_commodity_waits_for_the_load,
            confirm_of_a_lost_token_follows_the_stores_deduction_once,
            confirm_after_a_release_takes_the_stores_deduction_once,
            a_counted_version_is_never_counted_again,
            a_lost_tokens_deduction_waits_for_the_load,
            init_makes_held_reservations_again_once,
            keep_if_reserved_keeps_only_a_reserved_token,
            a_counter_that_sold_lost_units_again_goes_below_zero_and_back,
            racing_buyers_never_get_more_than_the_stock,
            shops_are_kept_apart,
            a_kept_check_is_armed_with_its_reservation_and_handed_out_until_done,
            a_confirmation_forgets_its_kept_check,
            a_load_arms_the_checks_of_the_reservations_it_makes_again,
            a_check_handed_out_again_is_not_forgotten_by_its_first_taker,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let cache: ::std::sync::Arc<dyn $crate::StockCache> = ($factory)().await;
                $crate::stock_cache::$case(cache).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per case of [`holdings`], each on a fresh adapter from `$factory`.
#[macro_export]
macro_rules! holdings_contract {
    ($factory:expr) => {
        $crate::holdings_contract!(@cases $factory;
            a_cart_past_the_units_cap_is_refused_and_records_nothing,
            racing_carts_never_pass_a_cap_together,
            admitted_orders_count_until_the_store_shows_them,
            an_admission_stops_counting_after_recent_ms,
            withdrawn_orders_no_longer_count,
            a_retry_of_admitted_orders_passes_and_counts_once,
            buyers_are_kept_apart,
            caps_off_refuse_nothing_but_still_record,
            orders_the_store_already_shows_are_not_recorded_again,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let gate: ::std::sync::Arc<dyn $crate::Holdings> = ($factory)().await;
                $crate::holdings::$case(gate).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per case of [`bus`], each on a fresh fixture from `$factory`.
#[macro_export]
macro_rules! bus_contract {
    ($factory:expr) => {
        $crate::bus_contract!(@cases $factory;
            published_messages_are_delivered_then_gone_once_acked,
            receive_hands_out_at_most_max,
            topics_are_separate_queues,
            delayed_messages_wait_until_due,
            a_retry_comes_back_later_with_its_attempt_count,
            a_dead_letter_leaves_the_queue_and_is_counted,
            depth_counts_waiting_and_delayed_messages,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: ::std::sync::Arc<dyn $crate::BusFixture> = ($factory)().await;
                $crate::bus::$case(fixture).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per case of [`store`], each on a fresh store from `$factory`.
#[macro_export]
macro_rules! store_contract {
    ($factory:expr) => {
        $crate::store_contract!(@cases $factory;
            catalog_and_stock_ledger,
            create_deducts_stock_once_and_a_redelivery_changes_nothing,
            create_never_takes_stock_below_zero,
            a_duplicate_in_one_batch_is_created_once,
            cancel_returns_stock_once_with_a_restock_event,
            a_payment_attempt_blocks_cancel_and_settles_through_the_safe_pay_set,
            a_declined_payment_goes_back_to_to_pay,
            outbox_events_come_oldest_first_until_done,
            idempotency_keys_pin_the_first_request,
            a_buyers_orders_page_newest_first,
            forgetting_pending_views_leaves_created_orders_alone,
            meta_values_are_replaced_only_from_what_they_hold,
            a_fence_refuses_every_older_leader,
            a_lease_has_one_holder_at_a_time,
            racing_batches_never_sell_more_than_the_stock,
            racing_changes_are_each_decided_as_if_alone,
            pending_orders_are_the_accepted_ones_not_created_yet,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = ($factory)().await;
                let store: ::std::sync::Arc<dyn $crate::Store> = store;
                $crate::store::$case(store).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per case of [`payments`], each on fresh books from `$factory`.
#[macro_export]
macro_rules! payment_ledger_contract {
    ($factory:expr) => {
        $crate::payment_ledger_contract!(@cases $factory;
            a_retry_answers_the_first_result_and_a_paid_order_is_never_charged_again,
            racing_retries_of_one_attempt_capture_once,
            racing_attempts_with_different_keys_capture_once,
            a_decline_is_definite_and_captures_nothing,
            a_lost_answer_stays_processing_under_its_lease_then_settles_as_captured,
            a_timeout_settles_as_declined_and_voids_a_late_capture,
            a_charge_past_its_deadline_is_not_started,
            a_charge_whose_entry_lands_past_its_deadline_is_voided_not_captured,
            refunds_are_idempotent_per_key_and_never_exceed_the_charge,
            racing_refunds_never_exceed_the_charge,
            the_first_record_of_an_attempt_wins_at_the_acquirer,
            a_lost_answer_write_is_copied_again_from_the_acquirer,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (books, _guard) = ($factory)().await;
                $crate::payments::$case(books).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per case of [`registry`], each on a fresh registry from `$factory`.
#[macro_export]
macro_rules! registry_contract {
    ($factory:expr) => {
        $crate::registry_contract!(@cases $factory;
            a_registered_member_is_seen_by_every_participant,
            a_deregistered_member_leaves_at_once,
            a_participant_gone_without_a_word_leaves_within_the_ttl,
            worker_ids_are_unique_among_live_participants,
            one_leader_per_role_and_a_newer_one_has_a_larger_fence,
            a_setting_reaches_every_participant,
            status_lists_servers_and_members,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: ::std::sync::Arc<dyn $crate::RegistryFixture> = ($factory)().await;
                $crate::registry::$case(fixture).await;
            }
        )*
    };
}
