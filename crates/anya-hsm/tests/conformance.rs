//! The HSM conformance suite against the software provider.

anya_hsm::hsm_conformance_suite!(Some(anya_hsm::conformance::software_fixture()));
anya_hsm::hsm_rollback_suite!(Some(anya_hsm::conformance::software_fixture()));
