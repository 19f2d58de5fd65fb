//! Helpers shared by integration tests. Each test binary uses only some of
//! them, so unused-item warnings are expected per binary and silenced here.
#![allow(dead_code)]

pub mod craft;
#[cfg(unix)]
pub mod netns;
pub mod node;
#[cfg(unix)]
pub mod pg;
