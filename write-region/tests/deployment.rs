//! The Helm chart deploys the write region with every setting it reads (see `testkit::helm`).

use write_region::Config;

#[test]
fn the_chart_sets_every_setting_of_the_write_region() -> anyhow::Result<()> {
    // The failpoint kills the process on purpose, for the crash tests only.
    testkit::helm::check_settings(
        "write-region",
        "WRITE_REGION_",
        &Config::default(),
        &["FAILPOINT"],
    )
}
