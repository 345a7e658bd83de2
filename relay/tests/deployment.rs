//! The Helm chart deploys the relay with every setting it reads (see `testkit::helm`).

use relay::Config;

#[test]
fn the_chart_sets_every_setting_of_the_relay() -> anyhow::Result<()> {
    testkit::helm::check_settings("relay", "RELAY_", &Config::default(), &[])
}
