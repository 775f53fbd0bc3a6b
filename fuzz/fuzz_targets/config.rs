//! Fuzzes config parsing and validation with arbitrary text: an error or
//! a valid config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtarn::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => assert!(config.validate().is_ok()),
        Err(ConfigError::Invalid { key, .. }) => assert!(!key.is_empty()),
        Err(_) => {}
    }
});
