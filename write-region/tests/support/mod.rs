//! What every write-region test starts from; the harness itself is `testkit::write_region`.

/// A write-region configuration no other test shares.
pub fn isolated_config() -> write_region::Config {
    testkit::write_region::isolated_config("wr", &testkit::tag())
}
