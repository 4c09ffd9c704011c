//! Helpers shared by integration tests (`mod support;` in a test file).

// Each test binary uses a part of the helpers.
#[allow(dead_code)]
pub mod engines;
