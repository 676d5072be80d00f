//! The shared Kafka broker keeps every record: 2 × 25,000 keyed records from two idempotent
//! producers at once, in batches, all read back exactly once, intact and in order
//! ([`support::kafka::self_check`]). `Broker::start` runs the same check once per test
//! process and refuses a broker that fails it; `scripts/test` runs this test before the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kafka::{self_check, Broker, SELF_CHECK_RECORDS};

#[test]
fn the_broker_returns_every_record_exactly_once_in_order() {
    let broker = Broker::start();
    let account =
        self_check(&broker.bootstrap, &broker.topic("selfcheck"), SELF_CHECK_RECORDS).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("broker self-check on {}: {account}", broker.bootstrap);
}
