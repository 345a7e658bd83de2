//! The Helm chart deploys each read region with every setting it reads (see `testkit::helm`).

use read_region::Config;

#[test]
fn the_chart_sets_every_setting_of_a_read_region() -> anyhow::Result<()> {
    testkit::helm::check_settings("read-region-eu", "READ_REGION_", &Config::default(), &[])
}
