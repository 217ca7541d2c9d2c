//! Integrations with specific venues.

pub mod deribit;
