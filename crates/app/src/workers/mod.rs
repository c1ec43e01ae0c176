//! The workers that finish the flow. Each step is steppable: [`Orderly::try_execute`] does one bounded
//! step and says what it did, so tests drive them without sleeping; [`run`] loops a step until shutdown.
//!
//! # Layout
//! - [`create`]: the create-order consumer (remarks 3–5).
//! - [`consumers`]: the one-message topics — reservation checks, unpaid timeouts, pay-at-once charges.
//! - [`outbox`]: the outbox relay.
//! - [`reconcile`]: safe pay, the reconciler of payments without a definite answer.
//! - [`leases`]: the roles one process of a cluster runs at a time.

mod consumers;
mod create;
mod leases;
mod outbox;
mod reconcile;

use crate::model::{Delivery, Topic};
use crate::orderly::Orderly;
use crate::ports::PortError;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Messages, events or payments handled to completion.
    pub done: usize,
    /// Handed back for a later try.
    pub retried: usize,
}

impl Outcome {
    pub fn is_idle(self) -> bool {
        self.done == 0 && self.retried == 0
    }
}

/// Every step the system needs, in one place, so a runner or a test can drive them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateOrders,
    ReservationChecks,
    UnpaidTimeouts,
    Charges,
    Outbox,
    Reconcile,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::CreateOrders,
        Step::ReservationChecks,
        Step::UnpaidTimeouts,
        Step::Charges,
        Step::Outbox,
        Step::Reconcile,
    ];
}

impl Orderly {
    pub async fn try_execute(&self, step: Step) -> Result<Outcome, PortError> {
        match step {
            Step::CreateOrders => self.create_orders_step().await,
            Step::ReservationChecks => {
                // Checks published on the bus (a cache that does not keep them, or an earlier build's) and
                // those the cache keeps: one failing does not hold up the other.
                match (self.consume(Topic::ReservationCheck).await, self.sweep_kept_checks().await) {
                    (Ok(published), Ok(kept)) => {
                        Ok(Outcome { done: published.done + kept.done, retried: published.retried + kept.retried })
                    }
                    (Err(error), _) | (_, Err(error)) => Err(error),
                }
            }
            Step::UnpaidTimeouts => self.consume(Topic::UnpaidTimeout).await,
            Step::Charges => self.consume(Topic::Charge).await,
            Step::Outbox => self.relay_outbox_step().await,
            Step::Reconcile => self.reconcile_step().await,
        }
    }

    /// Runs every step until nothing is left to do now (timers not yet due stay). Bounded.
    pub async fn drain(&self) -> Result<Outcome, PortError> {
        let mut total = Outcome::default();
        for _ in 0..10_000 {
            // Everything due now, the cache's reservation checks too: not held back by the sweep's pace.
            if let Ok(mut kept) = self.kept_checks.lock() {
                kept.next_sweep_ms = 0;
            }
            let mut round = Outcome::default();
            for step in Step::ALL {
                let outcome = self.try_execute(step).await?;
                round.done += outcome.done;
                round.retried += outcome.retried;
            }
            total.done += round.done;
            total.retried += round.retried;
            if round.done == 0 {
                return Ok(total);
            }
        }
        Ok(total)
    }

    /// A message whose handling failed. A dependency that is down (a retryable error) never sends it to
    /// the dead letters: the flow waits for the dependency, backing off to `redelivery_delay_ms_max`, so an
    /// accepted order is created however long the outage (forced completion). Only a message that fails
    /// for another reason `delivery_attempts_max` times is dead-lettered, for an operator.
    async fn retry_or_dead_letter(&self, delivery: &Delivery, error: &PortError) -> Result<Fate, PortError> {
        if !error.is_retryable() && delivery.attempt >= self.config().delivery_attempts_max {
            tracing::error!(attempt = delivery.attempt, %error, "message failed too often; dead-lettered");
            self.ports.bus.dead_letter(&delivery.receipt, &error.to_string()).await?;
            return Ok(Fate::DeadLettered);
        }
        let doublings = delivery.attempt.saturating_sub(1).min(16);
        let config = self.config();
        let delay_ms = config
            .redelivery_delay_ms
            .saturating_mul(1 << doublings)
            .min(config.redelivery_delay_ms_max.max(config.redelivery_delay_ms));
        self.ports.bus.retry(&delivery.receipt, self.ports.clock.now_ms() + delay_ms).await?;
        Ok(Fate::Retried)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Retried,
    DeadLettered,
}

/// Loops `step` until `shutdown` flips, pausing `idle_ms` when a step found nothing. Errors are logged
/// where they are handled (here) and retried after `idle_ms`.
pub async fn run(orderly: Orderly, step: Step, idle_ms: u64, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pause_ms = match orderly.try_execute(step).await {
            Ok(outcome) if !outcome.is_idle() => continue,
            Ok(_) => idle_ms,
            Err(error) => {
                tracing::warn!(?step, %error, "worker step failed");
                idle_ms
            }
        };
        tokio::select! {
            () = orderly.ports.clock.sleep_ms(pause_ms) => {}
            _ = shutdown.changed() => {}
        }
    }
}
