//! Configuration: any text loads or gives errors (syntax with line and column, or
//! diagnostics with paths), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::{ConfigError, Gateway};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    match Gateway::load(text) {
        Ok(loaded) => assert_eq!(loaded.gateway.endpoints.len(), loaded.gateway.config.endpoints.len()),
        Err(ConfigError::Syntax { line, .. }) => assert!(line >= 1),
        Err(ConfigError::Invalid(diags)) => assert!(!diags.is_empty()),
    }
});
